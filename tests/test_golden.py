"""Golden parity with the official VAR / M-VAR code (shared/golden/setA; VAR with shared AdaLN: tests/golden/setB_saln),
through the same command users run: `python -m varbench.compat check-golden DIR --only PART`. Tolerances are the
golden README's; never loosen them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED
from safetensors.torch import load_file, save_file

from varbench.compat.golden import check_golden


@pytest.mark.parametrize("part", ["tokenizer", "var", "mvar"])
def test_check_golden_part(part, golden_dir):
    rows = check_golden(golden_dir, [part])
    report = "\n".join(f"{r.name}: {r.error:.3e} (tol {r.tolerance:.0e})" for r in rows)
    print(report)
    assert rows and all(r.passed for r in rows), report


def test_cli_exit_status(golden_dir, tmp_path):
    out = tmp_path / "golden.jsonl"
    ok = subprocess.run([sys.executable, "-m", "varbench.compat", "check-golden", str(golden_dir), "--only", "var",
                         "--out", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "var.logits" in ok.stdout and out.read_text().count("\n") >= 3
    bad = subprocess.run([sys.executable, "-m", "varbench.compat", "check-golden", str(golden_dir), "--only", "vae"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "valid" in bad.stderr


def test_cli_fails_when_a_tensor_is_wrong(golden_dir, tmp_path):
    """Copy the golden folder with one logit changed by 1e-3: the command must fail on that tensor."""
    import shutil

    from safetensors.torch import load_file, save_file
    bad_dir = tmp_path / "golden"
    shutil.copytree(golden_dir, bad_dir)
    io = load_file(str(bad_dir / "var_io.safetensors"))
    io["logits"][0, 5, 7] += 1e-3
    save_file(io, str(bad_dir / "var_io.safetensors"))
    rows = {r.name: r for r in check_golden(bad_dir, ["var"])}
    assert not rows["var.logits"].passed
    assert rows["var.logits_cfg_guided_cached"].passed


GOLDEN_AIM = SHARED / "golden" / "aim_setC"


def test_check_golden_aim_cli(tmp_path):
    """`--only aim` on set C: VQ-f16 tensors, state dict, training forward and the official sampling path."""
    assert (GOLDEN_AIM / "config.json").is_file(), f"golden set C not found at {GOLDEN_AIM}"
    out = tmp_path / "aim.jsonl"
    run = subprocess.run([sys.executable, "-m", "varbench.compat", "check-golden", str(GOLDEN_AIM), "--only", "aim",
                          "--out", str(out)], capture_output=True, text=True)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    names = [json.loads(line)["name"] for line in out.read_text().splitlines()]
    for tensor in ("aim.tokenizer.recon", "aim.tokenizer.ids (mismatches)", "aim.logits_train",
                   "aim.logits_steps_cond (official positions)", "aim.logits_steps_guided (official positions)"):
        assert tensor in names


def test_check_golden_aim_fails_when_a_tensor_is_wrong(tmp_path):
    """Set C with one guided step logit changed by 1e-3 and one token id changed: exactly those rows fail."""
    bad_dir = tmp_path / "aim"
    shutil.copytree(GOLDEN_AIM, bad_dir)
    io = load_file(str(bad_dir / "aim_io.safetensors"))
    io["logits_steps_guided"][1, 3, 5] += 1e-3
    save_file(io, str(bad_dir / "aim_io.safetensors"))
    tok = load_file(str(bad_dir / "tokenizer_io.safetensors"))
    tok["ids"][0, 2] = (tok["ids"][0, 2] + 1) % 256
    save_file(tok, str(bad_dir / "tokenizer_io.safetensors"))
    failed = {r.name for r in check_golden(bad_dir, ["aim"]) if not r.passed}
    # the changed id also changes the decoded image and codes, which the golden computed from the right ids
    assert failed == {"aim.logits_steps_guided (official positions)", "aim.tokenizer.ids (mismatches)",
                      "aim.tokenizer.quant", "aim.tokenizer.recon"}


GOLDEN_B_SALN = Path(__file__).resolve().parent / "golden" / "setB_saln"


def test_check_golden_shared_aln():
    """Set B (official VAR with shared AdaLN, tests/golden/setB_saln): the converted model reproduces its logits,
    through the same command users run, and its state dict round-trips under the official key names."""
    ok = subprocess.run([sys.executable, "-m", "varbench.compat", "check-golden", str(GOLDEN_B_SALN), "--only", "var"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rows = {r.name: r for r in check_golden(GOLDEN_B_SALN, ["var"])}
    assert rows["var.logits"].passed and rows["var.logits"].tolerance == 3e-5, rows
    assert any(name.startswith("var.state_dict round trip") and r.passed for name, r in rows.items()), rows


def test_shared_aln_golden_files_match_their_sha256():
    """config.json names every file of set B with its sha256: the data checked is the data generated."""
    import hashlib
    import json
    files = json.loads((GOLDEN_B_SALN / "config.json").read_text())["files"]
    assert set(files) == {p.name for p in GOLDEN_B_SALN.glob("*.safetensors")}
    for name, meta in files.items():
        data = (GOLDEN_B_SALN / name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (meta["bytes"], meta["sha256"]), name
