"""The registry every extension point uses: discovery of one-file extensions, one spelling, clear refusals."""
import sys

import pytest

from shared.errors import InvalidArgumentError
from shared.registry import Registry


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    pkg = tmp_path / "toyplugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "alpha.py").write_text("from tests.shared.test_registry import TOYS\n"
                                  "@TOYS.register('alpha')\nclass Alpha: pass\n")
    (pkg / "_private.py").write_text("raise RuntimeError('modules starting with _ are not discovered')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "toyplugins"
    for name in [m for m in sys.modules if m.startswith("toyplugins")]:
        del sys.modules[name]


TOYS: Registry = Registry("toy")


def test_first_lookup_imports_every_module_of_the_package(plugin_package):
    global TOYS
    TOYS = Registry("toy", plugin_package)
    assert TOYS.names() == ("alpha",)
    assert TOYS.get("alpha").__name__ == "Alpha"


def test_unknown_name_names_the_field_and_the_known_ones():
    reg = Registry("policy")
    reg.register("every", object())
    with pytest.raises(InvalidArgumentError, match=r"request_policy = 'evry': unknown policy \(known: every\)"):
        reg.get("evry", field="request_policy")


def test_a_name_is_registered_once_and_a_with_block_unregisters():
    reg = Registry("norm")
    first = reg.register("rank", object())
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("rank", object())
    assert reg.register("rank", first) is first  # re-registering the same object (a re-import) is fine
    with reg.registered("toy", 42):
        assert reg.get("toy") == 42 and "toy" in reg
    assert "toy" not in reg
