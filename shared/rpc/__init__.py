"""Generated gRPC stubs (python -m shared.codegen); do not edit."""
