"""Cloud candidate generators, one module each, registered in `shared.generator.GENERATORS` by the scheme of their
spec: `@GENERATORS.register("NAME")` on a `loader(arg, dataset, seen, threads)` (see shared/generator.py).

A new generator is one new module here; `lsc4rec cloud serve --generator NAME[:ARG]`, `train srm --coop
--generator` and everything else that resolves a spec find it by name.
"""
