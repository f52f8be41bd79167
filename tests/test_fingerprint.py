"""Model content hashes: an in-place overwrite with same-shaped weights is a new model for generate and train."""

from __future__ import annotations

import torch

from tests.helpers import build_tiny_llama


def _overwrite_in_place(folder, seed: int) -> None:
    """Save new random weights of the same shapes over the old files (same names, same sizes)."""
    from safetensors.torch import load_file, save_file

    f = folder / "model.safetensors"
    old = load_file(str(f))
    g = torch.Generator().manual_seed(seed)
    new = {k: torch.randn(v.shape, generator=g).to(v.dtype) for k, v in old.items()}
    size = f.stat().st_size
    save_file(new, str(f), metadata={"format": "pt"})
    assert f.stat().st_size == size


def test_in_place_overwrite_changes_the_hash_and_reuses_the_cache(tmp_path, monkeypatch, demo_model_dir):
    """Regression (issue 9 item 6): generate's sampler hash used file names and sizes (and config.json), and
    train's reference cache used path and mtimes: an overwritten checkpoint looked like the old one to generate."""
    from prefdata.fingerprint import folder_hash, model_hash
    from prefdata.generate import GenerateConfig, sampler_hash
    from prefdata.train.data import model_fingerprint

    monkeypatch.setenv("PREFDATA_CACHE", str(tmp_path / "cache"))
    model = build_tiny_llama(tmp_path / "m", demo_model_dir, layers=1)
    cfg = GenerateConfig(model=str(model))
    before, sampler_before = folder_hash(model), sampler_hash(cfg)
    assert model_hash(str(model)) == before == model_fingerprint(str(model))

    # the same files copied elsewhere: the same model (the hash is the content, not the path)
    import shutil

    copy = shutil.copytree(model, tmp_path / "copy")
    assert folder_hash(copy) == before

    _overwrite_in_place(model, seed=5)
    after = folder_hash(model)
    assert after != before and sampler_hash(cfg) != sampler_before and model_fingerprint(str(model)) == after

    # the per-file digests are cached by (size, mtime, ctime): unchanged files are not read again
    import prefdata.fingerprint as fp

    assert list((tmp_path / "cache" / "fingerprints").glob("*.json"))
    reads = []
    real = fp._file_digest
    monkeypatch.setattr(fp, "_file_digest", lambda path: reads.append(path.name) or real(path))
    assert folder_hash(model) == after and reads == []
    (model / "config.json").write_text((model / "config.json").read_text() + " ")
    assert folder_hash(model) != after and reads == ["config.json"]


def test_hub_model_has_the_same_hash_before_and_after_its_download(tmp_path, monkeypatch):
    """Regression (issue 9 item 6): a hub model not yet in the cache was keyed by its name, and by its files once
    downloaded, so a killed first `train --model org/x` was refused on rerun as another run and its reference
    cache was missed. The Hub cannot be reached here, so the one network call (the current revision) is replaced."""
    import huggingface_hub

    from prefdata.fingerprint import model_hash
    from prefdata.generate import GenerateConfig, sampler_hash

    commit = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    class Info:
        sha = commit

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, name, **kw: Info())
    before = model_hash("org/tiny")
    sampler_before = sampler_hash(GenerateConfig(model="org/tiny"))

    # the "download": a snapshot of that commit in the cache, and the Hub unreachable from now on
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text(commit)

    def offline(self, name, **kw):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    assert model_hash("org/tiny") == before
    assert sampler_hash(GenerateConfig(model="org/tiny")) == sampler_before
    # another commit is another model
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, name, **kw: Info())
    assert model_hash("org/other") != before


def test_a_checkpoint_hash_does_not_depend_on_the_workdir_path(tmp_path, monkeypatch, tiny_llama_dir):
    """The same round trained in two workdirs (as in a workdir moved and resumed) gives one sampler hash. The
    trainer writes `training_args.bin` (output and cache paths, absolute) into the checkpoint, and it was hashed."""
    import shutil

    from prefdata.generate import GenerateConfig, sampler_hash
    from prefdata.train.run import train
    from tests.helpers import FAST, pair_rows, write_jsonl

    monkeypatch.setenv("PREFDATA_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    outs = [tmp_path / w / "round_0" / "train" for w in ("here", "moved-elsewhere")]
    for out in outs:
        train(str(data), model=str(tiny_llama_dir), output_dir=str(out), max_steps=1, **FAST)
    assert str(outs[0]).encode() in (outs[0] / "training_args.bin").read_bytes()  # the path is in the file
    hashes = {sampler_hash(GenerateConfig(model=str(out), backend="hf")) for out in outs}
    assert len(hashes) == 1
    # and a workdir moved as it is keeps it
    moved = shutil.move(str(tmp_path / "here"), str(tmp_path / "new-place"))
    assert sampler_hash(GenerateConfig(model=f"{moved}/round_0/train", backend="hf")) in hashes
