"""The committed gRPC stubs are exactly what the codegen entry produces from proto/."""
from shared import codegen


def test_stubs_match_the_proto(tmp_path):
    fresh = codegen.generate(tmp_path)
    assert {p.name for p in fresh} == {"lsc4rec_pb2.py", "lsc4rec_pb2.pyi", "lsc4rec_pb2_grpc.py"}
    for path in fresh:
        assert (codegen.OUT / path.name).read_text() == path.read_text(), f"{path.name} is stale: run make codegen"
