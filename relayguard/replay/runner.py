"""One replay (or two, to compare policies), from files to the result document.

The document is what `--report DIR` writes as result.json: plain data, keys
sorted when written, no wall-clock time, no queue ids, so the same input,
scenario, policies and seed give the same bytes.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from relayguard.clock import VirtualClock
from relayguard.config import PolicySettings, Settings, load_settings
from relayguard.policy import Policy
from relayguard.policy.loader import DEFAULT_POLICY_FILE
from relayguard.replay.driver import Progress, replay
from relayguard.replay.inputs import Input, read_input
from relayguard.replay.scenario import Scenario, load_scenario

FORMAT = "relayguard-replay/1"


@dataclass(frozen=True, slots=True)
class RunSpec:
    label: str
    policy: Policy


@dataclass(frozen=True, slots=True)
class Prepared:
    scenario: Scenario
    settings: Settings
    input: Input
    runs: tuple[RunSpec, ...]


def policy_name(path: str | Path) -> str:
    """How a policy file is named in results: the packaged ones by their short path."""
    p = Path(path)
    try:
        if p.resolve().parent == DEFAULT_POLICY_FILE.parent:
            return f"policies/{p.name}"
    except OSError:
        pass
    return str(path)


def run_label(files: Sequence[str | Path]) -> str:
    return "+".join(Path(f).stem for f in files) if files else "default"


def prepare(
    scenario_file: str | Path,
    input_path: str | Path,
    *,
    config: str | Path | None = None,
    policy_files: Sequence[str | Path] = (),
    compare: Sequence[str | Path] = (),
    input_format: str | None = None,
) -> Prepared:
    """Read and check everything before running anything: errors name their file."""
    from relayguard.relay import policy_for  # noqa: PLC0415 - pulls in the server modules

    scenario = load_scenario(scenario_file)
    settings = load_settings(config) if config is not None else scenario.settings()
    scenario.check_routes(tuple(r.name for r in settings.routes))
    runs: list[RunSpec] = []
    choices: list[Sequence[str | Path]] = [policy_files or settings.policy.files]
    if compare:
        choices.append(compare)
    labels: list[str] = []
    for files in choices:
        per = replace(settings, policy=PolicySettings(files=tuple(Path(f) for f in files)))
        label = run_label(files)
        while label in labels:
            label += "'"
        labels.append(label)
        runs.append(RunSpec(label, policy_for(per)))
    return Prepared(scenario, settings, read_input(input_path, input_format), tuple(runs))


def execute(
    prepared: Prepared,
    *,
    seed: int = 1,
    progress: Callable[[str], Progress | None] | None = None,
    on_clock: Callable[[VirtualClock], None] | None = None,
) -> dict[str, object]:
    """Run every policy over the same input and scenario; the result document."""
    inp = prepared.input
    runs: list[dict[str, object]] = []
    gc.freeze()  # the input stays to the end: keep the collector from walking it each time
    try:
        for spec in prepared.runs:
            result = replay(
                prepared.settings,
                spec.policy,
                prepared.scenario,
                inp.messages,
                seed=seed,
                progress=progress(spec.label) if progress else None,
                on_clock=on_clock,
            )
            runs.append(
                {
                    "label": spec.label,
                    "policy_files": [policy_name(f) for f in spec.policy.files],
                    **result,
                }
            )
    finally:
        gc.unfreeze()
    s = prepared.scenario
    return {
        "format": FORMAT,
        "seed": seed,
        "scenario": {**s.to_dict(), "file": s.file},
        "routes": [
            {
                "name": r.name,
                "host": r.host,
                "port": r.port,
                "source_address": r.source_address,
                "max_connections": r.max_connections,
            }
            for r in prepared.settings.routes
        ],
        "input": {
            "path": inp.path,
            "format": inp.format,
            "messages": len(inp.messages),
            "recipients": sum(len(m.envelope.recipients) for m in inp.messages),
            "skipped": len(inp.skipped),
        },
        "runs": runs,
    }


def to_json(document: dict[str, object]) -> str:
    return json.dumps(document, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def run_files(
    scenario_file: str | Path,
    input_path: str | Path,
    *,
    seed: int = 1,
    policy_files: Sequence[str | Path] = (),
    compare: Sequence[str | Path] = (),
    config: str | Path | None = None,
) -> dict[str, object]:
    """prepare + execute, for tests and scripts."""
    prepared = prepare(
        scenario_file, input_path, config=config, policy_files=policy_files, compare=compare
    )
    return execute(prepared, seed=seed)
