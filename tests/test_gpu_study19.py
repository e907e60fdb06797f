"""benchmarks/gpu_study19.sh's control flow on a CPU, with a stand-in for every `python run.py` (the grids, tokenize
and evaluate themselves are tested elsewhere): the committed tokenizers are checked and staged, the lr sweep runs,
each arm's rate comes from the imported records read with the machine's own (`best_lr --located`), and a sweep
whose imported records already locate every arm is not started again; an arm at the sweep's edge stops the call
before study_main, a located optimum starts it at that rate beside the second tokenizer's grid, then the
matched-FLOPs and CIFAR-10 grids follow at the same rates; the records come back in parts (and import_study19.sh
takes them in)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TOKENIZERS = REPO / "results/gpu/h200/study19/tokenizers"
STAND_IN = """#!/bin/bash
[ "$1" = run.py ] || exec {python} "$@"
echo "$*" >> calls.txt
case " $* " in *" grid="*) [ -f fail_at_start ] && {{ echo "no hydra/launcher/joblib" >&2; exit 1; }};; esac
for a in "$@"; do case $a in results_dir=*) rd=${{a#results_dir=}};; run_dir=*) run=${{a#run_dir=}};; esac; done
case " $* " in
  *" task=train_tokenizer "*) mkdir -p $run/tokenizer && echo w > $run/tokenizer/tokenizer.safetensors ;;
  *" grid=study_lr "*) mkdir -p $rd && cat fifth_point.jsonl >> $rd/evaluate.jsonl ;;
  *" grid=study_raster_lr "*) mkdir -p $rd && cat raster_sweep.jsonl >> $rd/evaluate.jsonl ;;
  *" grid=study_main "*|*" grid=study_tokenizer "*)  # each grid's start and end, a second apart
    g=$(for a in "$@"; do case $a in grid=*) echo ${{a#grid=}};; esac; done)
    echo "start $g" >> timeline.txt; sleep 1; echo "end $g" >> timeline.txt ;;
esac
"""


def val_nll(base_lr: float, value: float, mixer: str = "gla", intra: str = "none") -> str:
    return json.dumps({"metric": "val_nll", "value": value, "unit": "nats/token", "mixer": mixer, "intra": intra,
                       "depth": 6, "resolution": 64, "seed": 0, "cell_id": f"{mixer}-{intra}{base_lr}",
                       "date": "2099-01-01T00:00:00+00:00", "config": {"train": {"base_lr": base_lr}}}) + "\n"


def other_arms_located() -> str:
    """Imported sweep lines that locate every study arm but gla-none (best in the middle of three points): the
    scale-wise sweep is then complete once the machine locates gla-none."""
    arms = yaml.safe_load((REPO / "varbench/configs/grid/study_base.yaml").read_text())["study"]["lr"]
    return "".join(val_nll(b, v, *arm.split("-")) for arm in arms if arm != "gla-none"
                   for b, v in ((4e-3, 3.9), (8e-3, 3.7), (1.6e-2, 3.8)))


def run_study(tmp_path, fifth_point: str, staged_inception: bool, staged_cifar: bool = False, imported: str = "",
              raster_sweep: str | None = None, uncommitted: tuple[str, ...] = (), stages: str = "all"):
    """The script (400 s) in a tree as `gpu_tree.sh out` leaves it: the sweep's imported val_nll lines (gla-none's
    best at 3.2e-2, the edge; `imported`: more of them) and the committed tokenizers with their sums (a tree with
    results/ in it carries them). `fifth_point`: the val_nll lines the machine's lr cells write; `raster_sweep`: the
    raster arms' cells' (and TRAIN_TOKENIZERS=proc_single); `uncommitted`: tokenizers whose files the tree lacks
    (their sums stay); `stages`: the script's STAGES."""
    tree, bin_dir = tmp_path / "tree", tmp_path / "bin"
    (tree / "benchmarks").mkdir(parents=True)
    shutil.copy(REPO / "benchmarks/gpu_study19.sh", tree / "benchmarks")
    shutil.copytree(TOKENIZERS, tree / "results/gpu/h200/study19/tokenizers")
    for name in uncommitted:
        (tree / f"results/gpu/h200/study19/tokenizers/{name}.safetensors").unlink()
    lr = tree / "results/gpu/h200/study19/lr"
    lr.mkdir()
    (lr / "val_nll.jsonl").write_text("".join(val_nll(b, v) for b, v in ((4e-3, 3.9), (8e-3, 3.8), (1.6e-2, 3.7),
                                                                          (3.2e-2, 3.6))) + imported)
    (tree / "fifth_point.jsonl").write_text(fifth_point)
    (tree / "raster_sweep.jsonl").write_text(raster_sweep or "")
    bin_dir.mkdir()
    (bin_dir / "python").write_text(STAND_IN.format(python=sys.executable))
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho '0 %, 1 MiB'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    inception = tmp_path / ("inception.safetensors" if staged_inception else "absent")
    if staged_inception:
        inception.write_text("")  # the script only checks that the weights are staged; evaluate is a stand-in
    archive = tmp_path / ("cifar10_jpg.tar.gz" if staged_cifar else "absent.tar.gz")
    if staged_cifar:  # the archive's layout (../shared/data/README.md): train/ and test/ class folders
        for split in ("train", "test"):
            (tmp_path / "cifar10_jpg" / split / "airplane").mkdir(parents=True)
        subprocess.run(["tar", "czf", archive, "-C", tmp_path, "cifar10_jpg"], check=True)
    (tmp_path / "out").mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "OUT": str(tmp_path / "out"), "INC": str(inception), "ARCHIVE": str(archive),
           "TRAIN_TOKENIZERS": "proc_single" if raster_sweep is not None else "", "STAGES": stages}
    return subprocess.run(["bash", "benchmarks/gpu_study19.sh", "400"], cwd=tree, capture_output=True, text=True,
                          env=env, timeout=300)


def test_an_arm_still_at_the_sweep_s_edge_stops_the_call_before_study_main(tmp_path):
    run = run_study(tmp_path, fifth_point="", staged_inception=True,  # the machine ran no fifth point
                    imported=other_arms_located())
    assert run.returncode == 0, run.stderr[-2000:]
    driver = (tmp_path / "tree/runs/s12/logs/driver.log").read_text()
    assert "gla-none's best base_lr 3.2e-02 is at the sweep's edge" in driver
    assert "main not started: the lr sweep misses an arm or has one at its edge" in driver
    calls = (tmp_path / "tree/calls.txt").read_text()
    assert "grid=study_lr" in calls and "grid=study_main" not in calls and "task=evaluate" not in calls
    assert (tmp_path / "out/records.tgz.partaa").is_file() and (tmp_path / "out/logs.tar.gz").is_file()


def test_a_located_optimum_starts_study_main_at_it_beside_the_second_tokenizer_then_flops_and_cifar(tmp_path):
    run = run_study(tmp_path, fifth_point=val_nll(6.4e-2, 3.65), staged_inception=True,  # this machine's cell
                    staged_cifar=True, imported=other_arms_located())
    assert run.returncode == 0, run.stderr[-2000:]
    driver = (tmp_path / "tree/runs/s12/logs/driver.log").read_text()
    (rates,) = [line for line in driver.splitlines() if " learning rates: " in line]
    assert "study.lr.gla-none=3.2e-02" in rates and "study.lr.attention-local=8.0e-03" in rates
    calls = (tmp_path / "tree/calls.txt").read_text().splitlines()
    (main,) = [c for c in calls if "grid=study_main" in c]
    assert "study.lr.gla-none=3.2e-02" in main and f"inception_weights={tmp_path}/inception.safetensors" in main
    # the second tokenizer's grid runs beside study_main's (both start before either ends)
    timeline = (tmp_path / "tree/timeline.txt").read_text().splitlines()
    assert sorted(timeline[:2]) == ["start study_main", "start study_tokenizer"], timeline
    # then the second tokenizer, matched FLOPs and CIFAR-10, each at the same rates into its own records
    (tokenizer_b,) = [c for c in calls if "grid=study_tokenizer" in c]
    (flops,) = [c for c in calls if "grid=study_flops" in c]
    (cifar,) = [c for c in calls if "grid=study_cifar" in c]
    assert "runs/study19/proc_b/tokenizer" in tokenizer_b and "results_dir=runs/s12/results/main_proc" in tokenizer_b
    assert "results_dir=runs/s12/results/flops" in flops and "runs/study19/proc/tokenizer" in flops
    assert "data=folder data.root=runs/study19/cifar10_jpg" in cifar and "runs/study19/cifar/tokenizer" in cifar
    assert "results_dir=runs/s12/results/main_cifar" in cifar
    assert all("study.lr.gla-none=3.2e-02" in c for c in (tokenizer_b, flops, cifar))
    assert (tmp_path / "tree/runs/study19/cifar10_jpg/val/airplane").is_dir()  # test/ serves as val/
    # the raster arms then sweep (here their cells write no records: no located rate, so no main raster grid)
    assert "raster not started: the raster lr sweep misses an arm" in driver
    assert "grid=study_raster " not in " ".join(calls) + " " and "task=train_tokenizer" not in " ".join(calls)


def test_the_raster_arms_train_their_tokenizer_sweep_their_rates_then_join_study_main_s_records(tmp_path):
    sweep = "".join(val_nll(lr, v, mixer, "raster") for mixer, best in (("mamba2", 8e-3), ("attention", 1.6e-2))
                    for lr, v in ((4e-3, 3.9), (8e-3, 3.8), (1.6e-2, 3.85), (3.2e-2, 3.95))
                    for v in [v - 0.2 if lr == best else v])
    run = run_study(tmp_path, fifth_point=val_nll(6.4e-2, 3.65), staged_inception=True, staged_cifar=True,
                    raster_sweep=sweep, imported=other_arms_located(), uncommitted=("proc_single",))
    assert run.returncode == 0, run.stderr[-2000:]
    calls = (tmp_path / "tree/calls.txt").read_text().splitlines()
    (tokenizer,) = [c for c in calls if "task=train_tokenizer" in c]
    assert "run_dir=runs/study19/proc_single" in tokenizer and "tokenizer=tiny_single_study" in tokenizer
    (sweep_call,) = [c for c in calls if "grid=study_raster_lr" in c]
    assert "results_dir=runs/s12/results/lr_raster" in sweep_call and "runs/study19/proc_single/token" in sweep_call
    (raster,) = [c for c in calls if "grid=study_raster " in c + " "]
    assert "study.lr.attention-raster=1.6e-02 study.lr.mamba2-raster=8.0e-03" in raster
    assert "results_dir=runs/s12/results/main_proc" in raster and "inception_weights=" in raster
    assert (tmp_path / "out/tokenizer_proc_single.safetensors").is_file()  # to commit: it defines the raster arms


def test_stages_raster_runs_the_raster_arms_alone_on_their_committed_tokenizer(tmp_path):
    """STAGES=raster (session 18 on: every scale-wise grid is complete): no scale-wise tokenizer, sweep or grid, so
    only proc_single and the Inception weights need staging; the committed proc_single is checked and used."""
    sweep = "".join(val_nll(lr, v, mixer, "raster") for mixer in ("mamba2", "attention")
                    for lr, v in ((4e-3, 3.9), (8e-3, 3.7), (1.6e-2, 3.8)))
    stub = tmp_path / "tree/results/gpu/h200/study19/lr_raster/cells/m0/done.json"  # an imported cell, as a stub
    stub.parent.mkdir(parents=True)
    stub.write_text('{"cell_id": "m0", "stub": "gpu_tree.sh out"}')
    run = run_study(tmp_path, fifth_point="", staged_inception=True, raster_sweep=sweep, stages="raster",
                    uncommitted=("proc", "proc_b", "cifar"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "tree/runs/s12/results/lr_raster/cells/m0/done.json").is_file()  # so the grid skips it
    calls = (tmp_path / "tree/calls.txt").read_text()
    assert "stages: raster alone" in (tmp_path / "tree/runs/s12/logs/driver.log").read_text()
    assert not any(f"grid={g} " in calls for g in ("study_lr", "study_main", "study_tokenizer", "study_flops",
                                                    "study_cifar"))
    assert "task=train_tokenizer" not in calls and "run_dir=runs/study19/proc " not in calls
    assert "study.lr.attention-raster=8.0e-03 study.lr.mamba2-raster=8.0e-03" in calls
    assert not (tmp_path / "out/tokenizer_proc_single.safetensors").exists()  # committed: nothing to bring back


def test_a_raster_arm_whose_sweep_cells_all_failed_keeps_the_main_raster_grid_from_starting(tmp_path):
    """Session 17: attention's raster sweep cells all failed, best_lr located Mamba2's rate alone, and the main grid
    started with it, so the attention arm would have trained at study_base's placeholder rate as if at its best."""
    sweep = "".join(val_nll(lr, v, "mamba2", "raster") for lr, v in ((4e-3, 3.9), (8e-3, 3.7), (1.6e-2, 3.8)))
    run = run_study(tmp_path, fifth_point=val_nll(6.4e-2, 3.65), staged_inception=True, staged_cifar=True,
                    raster_sweep=sweep, imported=other_arms_located())
    assert run.returncode == 0, run.stderr[-2000:]
    driver = (tmp_path / "tree/runs/s12/logs/driver.log").read_text()
    assert "raster not started: the raster lr sweep misses an arm" in driver
    assert "the records hold 1 of the 2 arms (mamba2-raster)" in driver
    assert "grid=study_raster " not in (tmp_path / "tree/calls.txt").read_text() + " "


def test_a_grid_that_failed_before_any_cell_is_not_marked_done_so_the_next_call_runs_it(tmp_path):
    """Session 20: the raster sweep failed at start-up (no joblib launcher on the machine), was marked done all the
    same, and the next call on that machine skipped it."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree/fail_at_start").write_text("")
    run = run_study(tmp_path, fifth_point="", staged_inception=True, raster_sweep="", stages="raster")
    assert run.returncode == 0, run.stderr[-2000:]
    driver = (tmp_path / "tree/runs/s12/logs/driver.log").read_text()
    assert "raster_lr ended rc=1" in driver and "raster_lr recorded no cell: not marked done" in driver
    assert not (tmp_path / "tree/runs/s12/results/raster_lr.done").exists()
    assert "grid=study_raster " not in (tmp_path / "tree/calls.txt").read_text() + " "


def test_a_scale_wise_sweep_missing_an_arm_keeps_study_main_from_starting(tmp_path):
    run = run_study(tmp_path, fifth_point=val_nll(6.4e-2, 3.65), staged_inception=True)  # gla-none alone is swept
    assert run.returncode == 0, run.stderr[-2000:]
    assert "main not started: the lr sweep misses an arm" in (tmp_path / "tree/runs/s12/logs/driver.log").read_text()
    assert "grid=study_main" not in (tmp_path / "tree/calls.txt").read_text()


def test_a_sweep_whose_imported_records_locate_every_arm_s_optimum_is_not_run_again(tmp_path):
    imported = val_nll(6.4e-2, 3.65) + other_arms_located()  # gla-none past its edge, every other arm located
    run = run_study(tmp_path, fifth_point="", staged_inception=True, imported=imported)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "the sweep is not run again" in (tmp_path / "tree/runs/s12/logs/driver.log").read_text()
    calls = (tmp_path / "tree/calls.txt").read_text().splitlines()
    assert not [c for c in calls if "grid=study_lr" in c]
    (main,) = [c for c in calls if "grid=study_main" in c]
    assert "study.lr.gla-none=3.2e-02" in main and "study.lr.attention-local=8.0e-03" in main


def test_import_takes_each_study_s_records_and_passes_over_a_folder_of_stubs(tmp_path):
    """import_study19.sh on a machine's records as `collect` packs them: a study's records are stamped and appended,
    its cells' markers copied (not their lock files; a done cell loses an earlier attempt's failed marker); a folder
    holding only carried stubs (an earlier study's, session 15) is passed over; token caches' records go to
    tokenize.jsonl."""
    machine, tree = tmp_path / "machine", tmp_path / "tree"
    for path, text in {"results/flops/evaluate.jsonl": '{"metric": "fid", "value": 1.0}\n',
                       "results/flops/cells/c0/done.json": '{"cell_id": "c0"}',
                       "results/flops/cells/c1/.varbench.lock": "pid 7",  # a cell cut in flight
                       "results/flops/cells/c2/done.json": '{"cell_id": "c2"}',  # failed in an earlier session
                       "results/pilot_lr/cells/p0/done.json": '{"cell_id": "p0", "stub": "gpu_tree.sh out"}',
                       "results/tok_proc/tokenize.jsonl": '{"metric": "tokenize_seconds", "value": 2.0}\n'}.items():
        (machine / path).parent.mkdir(parents=True, exist_ok=True)
        (machine / path).write_text(text)
    (tmp_path / "call").mkdir()
    subprocess.run(f"tar czf - -C {machine} results | split -b 15M - {tmp_path}/call/records.tgz.part",
                   shell=True, check=True)
    (tree / "benchmarks").mkdir(parents=True)
    for script in ("import_study19.sh", "import_records.py"):
        shutil.copy(REPO / "benchmarks" / script, tree / "benchmarks")
    study = tree / "results/gpu/h200/study19"
    (study / "flops").mkdir(parents=True)
    (study / "flops/evaluate.jsonl").write_text('{"metric": "fid", "value": 2.0}\n')  # an earlier machine's
    (study / "flops/cells/c2").mkdir(parents=True)
    (study / "flops/cells/c2/failed.json").write_text('{"cell_id": "c2"}')
    run = subprocess.run(["bash", "benchmarks/import_study19.sh", str(tmp_path / "call"), "nothing"], cwd=tree,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    fids = [json.loads(line) for line in (study / "flops/evaluate.jsonl").read_text().splitlines()]
    assert [(r["value"], r.get("machine"), r.get("beside")) for r in fids] == [
        (2.0, None, None), (1.0, "nvidia-h200", "nothing")]
    assert (study / "flops/cells/c0/done.json").is_file() and not (study / "pilot_lr").exists()
    assert not list(study.rglob(".varbench.lock"))
    assert (study / "flops/cells/c2/done.json").is_file() and not (study / "flops/cells/c2/failed.json").exists()
    assert json.loads((study / "tokenize.jsonl").read_text())["metric"] == "tokenize_seconds"


def test_without_staged_inception_weights_study_main_does_not_start(tmp_path):
    run = run_study(tmp_path, fifth_point=val_nll(6.4e-2, 3.65), staged_inception=False, imported=other_arms_located())
    assert run.returncode == 0, run.stderr[-2000:]
    assert "main not started: no Inception weights staged" in (tmp_path / "tree/runs/s12/logs/driver.log").read_text()
    assert "grid=study_main" not in (tmp_path / "tree/calls.txt").read_text()


def test_gpu_tree_out_keeps_what_the_study_script_reads_and_back_restores_results(tmp_path):
    """`gpu_tree.sh out` leaves in results/ only what the call needs, small (done markers as stubs: the tree
    travels beside 63 MB of wheels under 64 MiB), and `back` brings the whole folder back as it was."""
    tree, hold = tmp_path / "tree", tmp_path / "hold"
    (tree / "benchmarks").mkdir(parents=True)
    shutil.copy(REPO / "benchmarks/gpu_tree.sh", tree / "benchmarks")
    study = tree / "results/gpu/h200/study19"
    (study / "tokenizers").mkdir(parents=True)
    (study / "tokenizers/SHA256SUMS").write_text("abc  proc.safetensors\n")
    (study / "tokenizers/proc.safetensors").write_bytes(b"weights" * 1000)
    (study / "lr/cells/c1").mkdir(parents=True)
    (study / "lr/cells/c1/done.json").write_text(json.dumps({"cell_id": "c1", "summary": "x" * 6000}))
    (study / "lr/cells/c2").mkdir()
    (study / "lr/cells/c2/failed.json").write_text("{}")
    (study / "lr/evaluate.jsonl").write_text(val_nll(4e-3, 3.9) + json.dumps({"metric": "fid", "value": 1}) + "\n")
    (study / "lr_raster").mkdir()  # the raster arms' sweep
    (study / "lr_raster/evaluate.jsonl").write_text(val_nll(4e-3, 3.8, "mamba2", "raster"))
    subprocess.run(["git", "init", "-q"], cwd=tree, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "t"],
                   cwd=tree, check=True)
    before = {p.relative_to(tree): p.read_bytes() for p in (tree / "results").rglob("*") if p.is_file()}
    env = {**os.environ, "HOLD": str(hold)}
    out = subprocess.run(["bash", "benchmarks/gpu_tree.sh", "out"], cwd=tree, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    kept = {str(p.relative_to(study)) for p in study.rglob("*") if p.is_file()}
    assert kept == {"tokenizers/SHA256SUMS", "lr/cells/c1/done.json", "lr/val_nll.jsonl", "lr_raster/val_nll.jsonl"}
    assert json.loads((study / "lr/cells/c1/done.json").read_text()) == {"cell_id": "c1", "stub": "gpu_tree.sh out"}
    assert [json.loads(line)["metric"] for line in (study / "lr/val_nll.jsonl").read_text().splitlines()] == [
        "val_nll"]
    assert (tree / ".commit").read_text().strip()
    back = subprocess.run(["bash", "benchmarks/gpu_tree.sh", "back"], cwd=tree, env=env, capture_output=True,
                          text=True)
    assert back.returncode == 0, back.stderr
    assert {p.relative_to(tree): p.read_bytes() for p in (tree / "results").rglob("*") if p.is_file()} == before
    # STUBS=0: a call that runs no study script carries an empty results/
    out = subprocess.run(["bash", "benchmarks/gpu_tree.sh", "out"], cwd=tree, env={**env, "STUBS": "0"},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert list((tree / "results").iterdir()) == [] and (hold / "gpu/h200/study19/lr/cells/c1/done.json").is_file()
    subprocess.run(["bash", "benchmarks/gpu_tree.sh", "back"], cwd=tree, env=env, check=True)
    assert {p.relative_to(tree): p.read_bytes() for p in (tree / "results").rglob("*") if p.is_file()} == before
