"""The sweeper of `configs/grid/*.yaml` (`hydra/sweeper: grid`): Hydra's basic sweeper (the cartesian product of
`params`, command-line overrides win) plus

- `cells`: extra cells, each a dict of overrides that replaces those keys of the product (e.g. the M-VAR cell
  `{mixer: mamba2, intra: full}` beside a sweep of every mixer with intra none); duplicates are dropped;
- cell ids from each cell's composed config (varbench.grid.cell_id), so duplicates are found by what they compute;
- skip: a cell whose `done.json` exists under results_dir is not launched (on Slurm: not submitted);
- order: seed-major (every variant's seed 0, then seed 1, ...), so a grid cut short, or a launcher that runs cells
  in order, leaves whole replicates of every variant rather than every seed of the first few;
- `+dry_run=true`: print every cell (index, cell id, status, overrides) and launch nothing;
- a summary at the end, and an error after the whole sweep when a cell failed (each failure is in
  `<results_dir>/cells/<cell_id>/failed.json`; run_cell records it without stopping the other cells).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf

from varbench import grid


class GridSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None,
                 cells: list[dict[str, Any]] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.cells = [] if cells is None else [dict(c) for c in cells]
        self._configs: dict[tuple, Any] = {}  # job overrides -> its composed config (composing takes a moment)

    def expand(self, arguments: list[str]) -> list[list[str]]:
        """Every cell's override list: the product of params (+ arguments), then each extra cell, deduplicated, in
        seed-major order (stable: within one seed, the order of the YAML)."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = {str(k): str(v) for k, v in (self.params or {}).items()}
        variants = [params] + [{**params, **{str(k): _as_override(v) for k, v in cell.items()}} for cell in self.cells]
        jobs, seen = [], set()
        for variant in variants:
            conf = [f"{k}={v}" for k, v in variant.items()] + list(arguments)
            for batch in self.split_arguments(parser.parse_overrides(conf), None):
                for job in batch:
                    cid = self.cell_id(job)
                    if cid not in seen:
                        seen.add(cid)
                        jobs.append(job)
        return sorted(jobs, key=_seed)

    def composed(self, job: Sequence[str]):
        """The config a job will compose (as the launcher composes it), composed once."""
        key = tuple(job)
        if key not in self._configs:
            self._configs[key] = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
        return self._configs[key]

    def cell_id(self, job: Sequence[str]) -> str:
        """The id of a job's cell: a hash of the config the job will compose."""
        return grid.cell_id(self.composed(job))

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        results_dir = self.config.results_dir
        jobs = self.expand(arguments)
        plan = [(job, self.cell_id(job)) for job in jobs]
        states = {cid: grid.status(results_dir, cid) for _, cid in plan}
        print(f"[grid] {len(plan)} cells on {_where(self.config.hydra.launcher)}, "
              f"run dirs under {self.config.hydra.sweep.dir}/<cell_id>, markers under {results_dir}/cells/<cell_id>:")
        for i, (job, cid) in enumerate(plan):
            print(f"[grid] #{i:<3} {cid}  {states[cid]:<8}  {' '.join(grid.identity_overrides(job))}")
        if self.config.get("dry_run", False):
            invalid = self.invalid_cells(plan)
            print("[grid] dry run: nothing launched")
            if invalid:  # (a run checks each cell as it starts; a dry run would otherwise call them all pending)
                raise InvalidCells(f"{len(invalid)} of {len(plan)} cells have an invalid config:\n"
                                   + "\n".join(invalid))
            return []
        todo = [job for job, cid in plan if states[cid] != "complete"]
        print(f"[grid] launching {len(todo)} cells ({len(plan) - len(todo)} complete, skipped)")
        returns = []
        if todo:
            self.overrides = list(self.split_overrides_to_chunks(todo, self.max_batch_size))
            self.batch_index, initial_job_idx = 0, 0
            sweep_dir = Path(self.config.hydra.sweep.dir)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
            while not self.is_done():
                batch = self.get_job_batch()
                self.validate_batch_is_legal(batch)  # a config error is the user's, not a cell's: fail before launching
                results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
                initial_job_idx += len(batch)
                returns.append(results)
        self._summarise(plan, [r for batch in returns for r in batch])
        return returns

    def invalid_cells(self, plan: Sequence) -> list[str]:
        """Each cell whose config the tasks' check refuses, with the check's message. Input files a cell names and
        that do not exist yet are printed, not refused: an earlier cell or stage may make them (each cell's own
        start checks them)."""
        from varbench.tasks import alone, check_config, missing_inputs
        out = []
        for i, (job, cid) in enumerate(plan):
            try:
                check_config(self.composed(job), inputs=False)
            except ValueError as err:
                out.append(f"#{i} {cid}: {err}")
            for missing in missing_inputs(alone(self.composed(job))):
                print(f"[grid] #{i} {cid}: not there yet (an earlier cell or stage must make it): {missing}")
        return out

    def _summarise(self, plan: Sequence, results: Sequence) -> None:
        results_dir = self.config.results_dir
        crashed = [r for r in results if r.status == JobStatus.FAILED]  # raised outside run_cell's recording
        failed = [cid for _, cid in plan if grid.status(results_dir, cid) == "failed"]
        done = sum(grid.status(results_dir, cid) == "complete" for _, cid in plan)
        print(f"[grid] done: {done}/{len(plan)} cells complete, {len(failed)} failed")
        if failed or crashed:
            lines = [f"{cid}: see {grid.cell_dir(results_dir, cid) / 'failed.json'}" for cid in failed]
            lines += [f"job {' '.join(r.overrides)}: {r._return_value!r}" for r in crashed]
            raise RuntimeError(f"{len(failed) + len(crashed)} of {len(plan)} grid cells failed (the others ran):\n"
                               + "\n".join(lines))


class InvalidCells(CompactHydraException):
    """Cells whose config the check refuses: Hydra prints the message alone (no traceback)."""


def _seed(job: Sequence[str]) -> int:
    """A job's `seed=` override as a number (0 when it sets none: the config's default seed is 0)."""
    return next((int(o.split("=", 1)[1]) for o in job if o.split("=", 1)[0].lstrip("+~") == "seed"), 0)


def _where(launcher) -> str:
    """The launcher in words: 'BasicLauncher', or the Slurm resources each cell asks for."""
    name = launcher._target_.rsplit(".", 1)[-1]
    if "partition" not in launcher:
        return name
    return (f"{name} (partition {launcher.partition}, {launcher.nodes} node(s) x {launcher.tasks_per_node} task(s), "
            f"{launcher.gpus_per_node or 0} GPU(s)/node, {launcher.timeout_min} min, "
            f"max_num_timeout {launcher.max_num_timeout})")


def _as_override(value: Any) -> str:
    """A YAML value of an extra cell as an override value string (lists in Hydra's [a,b] syntax)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_as_override(v) for v in value) + "]"
    return str(value)
