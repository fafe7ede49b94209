"""`lsc4rec cloud publish-llm`: a text-grounded LLM grows to a catalogue with new items (old token rows unchanged bit
for bit, new rows = proj(text), new items untrained), written as a verified version folder; bad input is refused with
exit code 2 and one line naming the file and field, and nothing is written."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cloud.generator_versions import read_version
from cloud.llm import load_generator
from cloud.llm import growth
from cloud.llm.grounding import GROUNDING_NAME
from cloud.text.encoders import resolve_encoder
from cloud.text.vectors import apply_whitening, encode
from shared.data.dataset import RawItem, build_dataset, write_dataset
from shared.item_vectors import read_whitening
from simulator.cli import main
from tests.cloud.grown_world import NUM_NEW, grown_dataset, record, untrained


def publish(world, generators, *extra, capsys=None):
    args = ["cloud", "publish-llm", "--llm", str(world.run), "--data", str(world.grown_dir), "--generators",
            str(generators), *extra, "--json"]
    code = main(args)
    if capsys is None:
        return code
    out = capsys.readouterr()
    return code, (json.loads(out.out.strip().splitlines()[-1]) if code == 0 else out.err)


def token_table(folder) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder / "model").get_input_embeddings().weight.detach()


@pytest.fixture(scope="module")
def published(grown_world, tmp_path_factory):
    generators = tmp_path_factory.mktemp("generators")
    assert publish(grown_world, generators, "--vectors", str(grown_world.grown_vectors)) == 0
    (folder,) = generators.iterdir()
    return grown_world, folder


def test_the_grounding_module_and_growth_name_the_same_file():
    assert growth.GROUNDING_NAME == GROUNDING_NAME


def test_old_token_rows_stay_bit_for_bit_and_new_rows_are_the_projected_text(published):
    world, folder = published
    before, after = token_table(world.run), token_table(folder)
    base = before.shape[0]
    assert after.shape == (base + NUM_NEW, before.shape[1])
    assert torch.equal(after[:base], before)  # the special tokens and every existing item, bit for bit
    with np.load(folder / GROUNDING_NAME) as grown, np.load(world.run / GROUNDING_NAME) as old:
        expected = grown["vectors"][-NUM_NEW:] @ old["proj"]
        assert np.allclose(after[base:].numpy(), expected, atol=1e-6)  # proj(text), no residual
        assert np.array_equal(grown["vectors"][:-NUM_NEW], old["vectors"]) and np.array_equal(grown["proj"], old["proj"])
        assert np.array_equal(grown["trained"], np.concatenate([old["trained"], np.zeros(NUM_NEW, dtype=bool)]))
        assert np.array_equal(grown["mean"], old["mean"])  # the whitening travels on, for the next growth


def test_the_version_folder_records_its_catalogue_and_loads_with_the_new_items_boosted(published):
    world, folder = published
    info = read_version(folder)  # every file's sha256 checked
    rec = record(folder)
    assert folder.name == f"llm-{info.version}" and rec["num_items"] == world.grown.num_items
    assert rec["vocab_hash"] == world.grown.vocab_hash and rec["new_items"] == NUM_NEW
    assert rec["grown_from"]["num_items"] == world.base.num_items
    assert info.catalog.raw_ids == tuple(i.raw_id for i in world.grown.items)
    assert json.loads((folder / "config.json").read_text())["version"] == info.version
    generator = load_generator(folder, world.grown)
    assert generator.num_items == world.grown.num_items and generator.version == info.version
    assert set(world.new_ids) <= set(untrained(folder).tolist())  # cold_boost applies to them
    history = [int(i) for i in world.grown.sequences()[0][:6]]
    n = len(set(untrained(folder)) - set(history))
    items = [c.item for c in generator.generate([history], n)[0]]
    assert set(world.new_ids) <= set(items)  # the boost puts the untrained items, the new ones included, first
    assert generator.generate([history + [world.new_ids[0]]], 3)[0]  # a new item in a history is fine


def test_the_encoder_embeds_the_new_items_as_the_models_were_embedded(published, tmp_path, monkeypatch):
    world, folder = published
    monkeypatch.setenv("LSC4REC_CACHE", str(tmp_path / "cache"))
    assert publish(world, tmp_path / "gen", "--encoder", world.encoder) == 0
    (by_encoder,) = (tmp_path / "gen").iterdir()
    with np.load(by_encoder / GROUNDING_NAME) as a, np.load(folder / GROUNDING_NAME) as b:
        assert np.allclose(a["vectors"], b["vectors"], atol=1e-4)  # == embed items --whitening-from
    new_items = world.grown.items[world.base.num_items:]
    meta = json.loads(str(np.load(world.run / GROUNDING_NAME)["meta"]))
    raw = encode([i.text for i in new_items], resolve_encoder(world.encoder), meta["pooling"], meta["prompt"],
                 progress=False)
    white = read_whitening(world.base_vectors)
    with np.load(by_encoder / GROUNDING_NAME) as a:
        assert np.allclose(a["vectors"][-NUM_NEW:], apply_whitening(raw, white["mean"], white["whitening"]),
                           atol=1e-5)


def test_a_version_grows_again(published, tmp_path):
    world, folder = published
    data = write_dataset(grown_dataset(world.grown, ["Item 44"], prefix="later"), tmp_path / "more")
    assert main(["cloud", "publish-llm", "--llm", str(folder), "--data", str(data), "--generators",
                 str(tmp_path / "gen"), "--encoder", world.encoder]) == 0
    (again,) = (tmp_path / "gen").iterdir()
    assert record(again)["grown_from"]["version"] == record(folder)["version"]
    assert record(again)["num_items"] == world.grown.num_items + 1
    assert torch.equal(token_table(again)[:-1], token_table(folder))


def _refused(world, generators, capsys, data=None, llm=None, vectors=None):
    args = ["cloud", "publish-llm", "--llm", str(llm or world.run), "--data", str(data or world.grown_dir),
            "--generators", str(generators), "--vectors", str(vectors or world.grown_vectors)]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("lsc4rec: error:"), err
    assert not generators.exists() or not any(generators.iterdir())  # nothing written, no staging left
    return err[0]


def _write_items(world, tmp_path, items):
    """The grown dataset folder with `items` as its catalogue (raw_id, title)."""
    raw = {r: RawItem(r, t) for r, t in items}
    events = [(world.grown.users[u - 1], items[0][0], int(t)) for u, _, t in world.grown.interactions[:5]]
    return write_dataset(build_dataset(events, raw), tmp_path / "data")


def test_a_shrunk_catalogue_is_refused(grown_world, tmp_path, capsys):
    items = [(i.raw_id, i.title) for i in grown_world.base.items[:-1]]
    line = _refused(grown_world, tmp_path / "gen", capsys, data=_write_items(grown_world, tmp_path, items))
    assert "items.tsv" in line and "field 'item'" in line and "39 items, fewer than the 40" in line


def test_a_reordered_catalogue_is_refused_naming_the_first_moved_item(grown_world, tmp_path, capsys):
    items = [(i.raw_id, i.title) for i in grown_world.base.items]
    items[4], items[5] = items[5], items[4]
    line = _refused(grown_world, tmp_path / "gen", capsys, data=_write_items(grown_world, tmp_path, items))
    assert "items.tsv:6: field 'raw_id': item 5 is '6' but was '5'" in line


def test_a_new_item_without_text_is_refused(grown_world, tmp_path, capsys):
    items = [(i.raw_id, i.title) for i in grown_world.base.items] + [("fresh", "Item 50"), ("blank", "")]
    line = _refused(grown_world, tmp_path / "gen", capsys, data=_write_items(grown_world, tmp_path, items))
    assert "items.tsv:43: field 'title': new item 42 ('blank') has no text" in line


def test_vectors_of_another_catalogue_are_refused(grown_world, tmp_path, capsys):
    line = _refused(grown_world, tmp_path / "gen", capsys, vectors=grown_world.base_vectors)
    assert "base.npz: field 'meta.vocab_hash'" in line and grown_world.grown.vocab_hash in line
    assert str(grown_world.grown_dir / "items.tsv") in line


def test_vectors_made_with_another_whitening_are_refused(grown_world, tmp_path, capsys):
    refit = tmp_path / "refit.npz"
    assert main(["embed", "items", "--data", str(grown_world.grown_dir), "--encoder", grown_world.encoder,
                 "--out", str(refit)]) == 0  # a whitening fitted anew moves the old items' vectors
    capsys.readouterr()
    line = _refused(grown_world, tmp_path / "gen", capsys, vectors=refit)
    assert "refit.npz: field 'vectors': row of item 1 differs" in line and "--whitening-from" in line


def test_an_id_only_generator_cannot_grow(grown_world, tmp_path, capsys):
    id_only = shutil.copytree(grown_world.run, tmp_path / "id-only")
    (id_only / GROUNDING_NAME).unlink()
    line = _refused(grown_world, tmp_path / "gen", capsys, llm=id_only)
    assert f"{id_only / GROUNDING_NAME}: field '-': missing: an id-only generator cannot embed new items" in line


def test_vectors_and_encoder_are_one_or_the_other(grown_world, tmp_path):
    with pytest.raises(SystemExit):
        main(["cloud", "publish-llm", "--llm", str(grown_world.run), "--data", str(grown_world.grown_dir),
              "--generators", str(tmp_path / "gen")])


def test_embed_items_refuses_a_whitening_source_that_keeps_none(grown_world, tmp_path, capsys):
    plain = tmp_path / "plain.npz"
    args = ["embed", "items", "--data", str(grown_world.base_dir), "--encoder", grown_world.encoder]
    assert main([*args, "--out", str(plain), "--no-whiten"]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "v.npz"), "--whitening-from", str(plain)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{plain}: field 'whitening': missing" in err[0] and not (tmp_path / "v.npz").exists()
