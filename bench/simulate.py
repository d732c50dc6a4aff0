"""How the routing policies compare on a real day of mybinder.org launches (issue 3).

Usage::

    python bench/simulate.py [--data ../shared/data] [--out DIR] [--json results.json]

The day is 2021-11-01 of ``launches/daily_launches_by_spec.csv`` (32,394 launches of 1,576
repositories), replayed against the federation of ``bench/simulate.yaml`` (quotas 300 / 180 /
60, weights 50 / 50 / 50) with the simulator's default member model (sessions exponential
with a mean of 20 minutes, a 6-hour warm window, pod counts reported every 60 s; see
``federation_redirect/simulate.py``). Scenarios, each printed as the ``federation-redirect``
commands that reproduce it:

* **day**: the day spread over the default daily curve (peak 14:00 UTC, three times the
  02:00 rate), every policy, seed 1; the targets are also checked on seeds 2 and 3.
* **workshop**: the same day plus workshops of 150 launches of one new repository within 10
  minutes: four in the quiet hours (00:30, 02:00, 03:30 and 05:00 UTC, four different
  repositories, so four different rankings) and one at 09:00 UTC, when the federation is
  already nearly full.
* **failure**: hetzner-gesis fails from 03:00 to 04:00 UTC; and, as a control for the
  knock-on effects of any perturbation, the same member out for one second. Checked: while
  it is out, no launch of a repository the undisturbed day sent to one other member moves;
  after it, no more such launches move than after the 1-second control (within 3 sigma of
  its count): a load-aware policy decides some later spills on loads one pod different after
  any perturbation at all, and that is what the control measures.
* **weight**: bids-ovh's weight doubles (50 -> 100) at noon.
* **curve**: the day spread with a flatter curve (amplitude 0.25) and evenly (0).

Next to each misses target, the floor no policy can go below on that trace: the launches one
pooled member of all 540 pods would refuse, plus the cold starts of perfect stickiness with no
capacity limit. Prints Markdown (the README's "Simulation" section is this output) and one
verdict line per target; exit status 1 if a target is missed. Takes about a minute.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from federation_redirect.config import Config, load_config
from federation_redirect.simulate import (
    POLICIES,
    Options,
    PolicyResult,
    SimulationResult,
    Workload,
    parse_outage,
    parse_weight_change,
    simulate,
)
from federation_redirect.trace import make_trace, parse_burst, read_counts, read_trace, write_trace

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "bench" / "simulate.yaml"
DAY = date(2021, 11, 1)
# four workshops in the quiet hours, one new repository each, and one in a busy hour
QUIET = {
    f"gh/workshop-org/workshop-{i}/HEAD": minute for i, minute in enumerate((30, 120, 210, 300))
}
BUSY = {"gh/workshop-org/workshop-busy/HEAD": 540}
FAIL = "hetzner-gesis@180-240"
CONTROL = "hetzner-gesis@180-180.0167"
WEIGHT = "bids-ovh=100@720"


@dataclass
class Target:
    name: str
    measured: str
    ok: bool


class Bench:
    def __init__(self, data: Path, out: Path) -> None:
        self.counts_path = data / "launches" / "daily_launches_by_spec.csv"
        self.counts = read_counts(self.counts_path)
        self.out = out
        self.config: Config = load_config(CONFIG)
        self.commands: list[str] = []
        self.results: dict[str, SimulationResult] = {}

    def trace(
        self, name: str, *, seed: int = 1, amplitude: float = 0.5, bursts: tuple[str, ...] = ()
    ) -> Path:
        path = self.out / f"{name}.jsonl"
        events = make_trace(
            self.counts,
            DAY,
            seed=seed,
            bursts=[parse_burst(b) for b in bursts],
            amplitude=amplitude,
        )
        with path.open("w", encoding="utf-8") as stream:
            write_trace(events, stream)
        command = f"federation-redirect make-trace --counts {self.counts_path} --date {DAY}"
        command += f" --seed {seed}"
        if amplitude != 0.5:
            command += f" --amplitude {amplitude:g}"
        command += "".join(f" --burst {b}" for b in bursts)
        self.commands.append(command + f" --output {path.name}")
        return path

    def run(
        self,
        name: str,
        trace: Path,
        *,
        seed: int = 1,
        policies: tuple[str, ...] = POLICIES,
        fail: tuple[str, ...] = (),
        weight: tuple[str, ...] = (),
        watch: tuple[str, ...] = (),
    ) -> SimulationResult:
        options = Options(
            seed=seed,
            outages=tuple(parse_outage(f) for f in fail),
            weight_changes=tuple(parse_weight_change(w) for w in weight),
            watch=watch,
        )
        command = f"federation-redirect simulate --config bench/simulate.yaml --trace {trace.name}"
        command += f" --seed {seed}"
        if policies != POLICIES:
            command += "".join(f" --policy {p}" for p in policies)
        command += "".join(f" --fail {f}" for f in fail) + "".join(f" --weight {w}" for w in weight)
        command += "".join(f" --repo {r}" for r in watch)
        self.commands.append(command)
        started = time.monotonic()
        result = simulate(self.config, read_trace(trace), policies, options)
        print(f"{name}: {time.monotonic() - started:.1f} s", file=sys.stderr)
        self.results[name] = result
        return result


def lower_bound(workload: Workload, capacity: int, cache_seconds: float) -> tuple[int, int]:
    """What no policy can beat on ``workload``: the launches refused by one pooled member of
    all ``capacity`` pods (a lower bound of the refusals of any split into members: pooling
    refuses only when every pod is busy), and the cold starts of perfect stickiness with no
    capacity limit (every repository on one member: a miss on its first launch and after each
    gap longer than the warm window)."""
    ends: list[float] = []
    refused = cold = 0
    last: dict[str, float] = {}
    for t, key, duration in zip(workload.times, workload.keys, workload.durations, strict=True):
        while ends and ends[0] <= t:
            heapq.heappop(ends)
        seen = last.get(key)
        last[key] = t
        if seen is None or t - seen > cache_seconds:
            cold += 1
        if len(ends) >= capacity:
            refused += 1
            continue
        heapq.heappush(ends, t + duration)
    return refused, cold


def churn_split(bench: Bench, name: str) -> tuple[int, int]:
    """Knock-on moves of single-home repositories in run ``name``: while its outage was on
    (repositories of other members), and after it."""
    churn = bench.results[name].policies["bounded"].churn
    assert churn is not None
    return churn.homed_while_out, churn.other_homed - churn.homed_while_out


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f} %"


def day_table(result: SimulationResult) -> list[str]:
    members = list(next(iter(result.policies.values())).members)
    short = {"hetzner-2i2c": "2i2c", "hetzner-gesis": "gesis", "bids-ovh": "bids"}
    names = "/".join(short.get(m, m) for m in members)
    lines = [
        f"| policy | launches | cache hits | misses | misses / bounded's | refused: quota | "
        f"refused: repo cap | refused under 85 % demand | first choice | share {names} | "
        f"peak / mean utilisation {names} |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    bounded = result.policies.get("bounded")
    for name, p in result.policies.items():
        ratio = f"{p.misses / bounded.misses:.2f}" if bounded else "-"
        shares = " / ".join(f"{100 * m.share:.0f}" for m in p.members.values())
        utils = " / ".join(
            f"{pct(m.peak_utilization, 0)} {pct(m.mean_utilization, 0)}".replace(" %", "%")
            for m in p.members.values()
        )
        lines.append(
            f"| {name} | {p.launches:,} | {p.cache_hits:,} ({pct(p.cache_hit_rate)}) | "
            f"{p.misses:,} | {ratio} | {p.rejected_quota:,} | {p.rejected_repo_cap:,} | "
            f"{p.rejected_below_threshold:,} | {pct(p.first_choice_rate)} | {shares} | {utils} |"
        )
    return lines


def bound_text(result: SimulationResult, random_run: PolicyResult) -> str:
    refused, cold = lower_bound(result.workload, result.capacity or 0, 6 * 3600)
    total = refused + cold
    return (
        f"{total:,} = {refused:,} refused by one pooled member + {cold:,} cold starts of "
        f"perfect stickiness: {total / random_run.misses:.2f} x"
    )


def targets(bench: Bench, seeds: list[int]) -> list[Target]:
    out = []
    for seed in seeds:
        r = bench.results[f"day seed {seed}"].policies
        b, rc, rnd = r["bounded"], r["rendezvous-capacity"], r["random"]
        tag = f" (seed {seed})"
        out += [
            Target(
                "bounded misses <= 1.1 x rendezvous-capacity's" + tag,
                f"{b.misses:,} vs {rc.misses:,}: {b.misses / rc.misses:.2f} x",
                b.misses <= 1.1 * rc.misses,
            ),
            Target(
                "bounded misses <= 0.75 x random's" + tag,
                f"{b.misses:,} vs {rnd.misses:,}: {b.misses / rnd.misses:.2f} x "
                f"(no policy can go below {bound_text(bench.results[f'day seed {seed}'], rnd)})",
                b.misses <= 0.75 * rnd.misses,
            ),
            Target(
                "bounded refuses no more than random" + tag,
                f"{b.rejected:,} vs {rnd.rejected:,}",
                b.rejected <= rnd.rejected,
            ),
            Target(
                "bounded refuses none while demand < 85 % of capacity" + tag,
                f"{b.rejected_below_threshold:,}",
                b.rejected_below_threshold == 0,
            ),
            Target(
                "bounded: no per-repository cap refusals" + tag,
                f"{b.rejected_repo_cap:,}",
                b.rejected_repo_cap == 0,
            ),
        ]
    quiet = bench.results["workshop quiet"].policies
    refused = {n: sum(x.rejected for x in p.repositories.values()) for n, p in quiet.items()}
    out.append(
        Target(
            "quiet-hour workshops: bounded refuses none of their 4 x 150 launches, rendezvous some",
            ", ".join(f"{n} {v}" for n, v in refused.items()),
            refused["bounded"] == 0 and refused["rendezvous"] > 0,
        )
    )
    during, after = churn_split(bench, "failure")
    _, after_control = churn_split(bench, "failure control")
    out.append(
        Target(
            "failure: while hetzner-gesis is out, bounded moves only its repositories",
            f"{during:,} launches of other single-home repositories moved",
            during == 0,
        )
    )
    # After the outage, any perturbation of a load-aware policy moves some decisions later in
    # the day (a spill decided on a load one pod different): the 1-second control measures
    # that. The outage's own after-effect is what exceeds it beyond Poisson noise.
    margin = 3 * math.sqrt(max(after_control, 1))
    out.append(
        Target(
            "failure: after it, no more moves than a 1-second outage causes (3 sigma)",
            f"{after:,} launches of single-home repositories moved after the outage, "
            f"{after_control:,} after the 1-second control",
            after <= after_control + margin,
        )
    )
    for amplitude in ("0.25", "0"):
        r = bench.results[f"curve {amplitude}"].policies
        b, rc, rnd = r["bounded"], r["rendezvous-capacity"], r["random"]
        tag = f" (curve amplitude {amplitude})"
        out += [
            Target(
                "bounded misses <= 0.75 x random's" + tag,
                f"{b.misses:,} vs {rnd.misses:,}: {b.misses / rnd.misses:.2f} x "
                f"(no policy can go below {bound_text(bench.results[f'curve {amplitude}'], rnd)})",
                b.misses <= 0.75 * rnd.misses,
            ),
            Target(
                "bounded refusals: none under 85 % demand, none at the repo cap" + tag,
                f"{b.rejected_below_threshold:,} and {b.rejected_repo_cap:,}",
                b.rejected_below_threshold == 0 and b.rejected_repo_cap == 0,
            ),
        ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, help="where traces go (default: a temporary dir)")
    parser.add_argument("--json", type=Path, help="write every result as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        bench = Bench(args.data, out)
        seeds = [1, 2, 3]
        for seed in seeds:
            trace = bench.trace(f"day-{seed}", seed=seed)
            policies = POLICIES if seed == 1 else ("bounded", "rendezvous-capacity", "random")
            bench.run(f"day seed {seed}", trace, seed=seed, policies=policies)
        day = out / "day-1.jsonl"
        for label, workshops in (("quiet", QUIET), ("busy", BUSY)):
            bursts = tuple(f"{spec},150,{minute},10" for spec, minute in workshops.items())
            trace = bench.trace(f"workshop-{label}", bursts=bursts)
            bench.run(f"workshop {label}", trace, watch=tuple(workshops))
        bench.run("failure", day, fail=(FAIL,))
        bench.run("failure control", day, fail=(CONTROL,))
        bench.run("weight", day, weight=(WEIGHT,))
        for amplitude in (0.25, 0.0):
            trace = bench.trace(f"curve-{amplitude:g}", amplitude=amplitude)
            bench.run(
                f"curve {amplitude:g}", trace, policies=("bounded", "rendezvous-capacity", "random")
            )
        report(bench, seeds)
        if args.json:
            doc = {name: r.to_json() for name, r in bench.results.items()}
            args.json.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        verdicts = targets(bench, seeds)
    print("\nTargets:\n")
    for t in verdicts:
        print(f"- [{'x' if t.ok else ' '}] {t.name}: {t.measured}")
    return 0 if all(t.ok for t in verdicts) else 1


def report(bench: Bench, seeds: list[int]) -> None:
    r = bench.results
    day = r["day seed 1"]
    print("Commands:\n\n```")
    print("\n".join(bench.commands))
    print("```\n")
    w = day.workload
    print(
        f"**Day** 2021-11-01, seed 1: {len(w):,} launches of {len(set(w.keys)):,} repositories; "
        f"offered demand peaks at {max(w.demand)} sessions "
        f"({100 * max(w.demand) / (day.capacity or 1):.0f} % of the 540 pods).\n"
    )
    print("\n".join(day_table(day)))
    print("\n**Other seeds** (misses; refused; refused under 85 % demand):\n")
    print("| seed | bounded | rendezvous-capacity | random |\n|---|---|---|---|")
    for seed in seeds:
        p = r[f"day seed {seed}"].policies
        cells = [
            f"{p[n].misses:,}; {p[n].rejected:,}; {p[n].rejected_below_threshold:,}"
            for n in ("bounded", "rendezvous-capacity", "random")
        ]
        print(f"| {seed} | " + " | ".join(cells) + " |")
    print(
        "\n**Workshops**: 150 launches of one new repository in 10 minutes; launches refused "
        "of each 150, and refusals of the whole day with and without the workshops:\n"
    )
    quiet_names = " | ".join(f"{m // 60:02d}:{m % 60:02d}" for m in QUIET.values())
    print(f"| policy | {quiet_names} | 09:00 | day refused: none / quiet / busy |")
    print("|---|" + "--:|" * (len(QUIET) + 2))
    for name in POLICIES:
        quiet: PolicyResult = r["workshop quiet"].policies[name]
        busy: PolicyResult = r["workshop busy"].policies[name]
        cells = [str(quiet.repositories[spec].rejected) for spec in QUIET]
        cells += [str(busy.repositories[spec].rejected) for spec in BUSY]
        totals = f"{day.policies[name].rejected:,} / {quiet.rejected:,} / {busy.rejected:,}"
        print(f"| {name} | " + " | ".join(cells) + f" | {totals} |")
    print(
        "\n**Churn**: launches from the event to the end of the day sent elsewhere than "
        "without it (moved), split into those the event asks for (expected), slow start, "
        "and knock-on moves of repositories the undisturbed run sent to one member (homed) "
        "or spread over several (spread):\n"
    )
    print("| scenario | policy | moved | expected | slow start | homed | spread | misses +/- |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    scenarios = (
        ("gesis out 03:00-04:00", "failure"),
        ("gesis out 1 s (control)", "failure control"),
        ("bids weight 50 -> 100 at 12:00", "weight"),
    )
    for label, key in scenarios:
        for name, run in r[key].policies.items():
            c = run.churn
            assert c is not None
            base = day.policies[name].misses
            print(
                f"| {label} | {name} | {pct(c.moved_fraction)} | {c.expected:,} | "
                f"{c.slow_start:,} | {c.other_homed:,} | {c.other_spread:,} | "
                f"{run.misses - base:+,} |"
            )
    print("\n**Daily curve** (misses; refused; refused under 85 % demand; per-repo cap):\n")
    print("| amplitude | peak demand | bounded | rendezvous-capacity | random | bounded / random |")
    print("|---|--:|---|---|---|--:|")
    for amplitude, key in (("0.5", "day seed 1"), ("0.25", "curve 0.25"), ("0", "curve 0")):
        res = r[key]
        runs = res.policies
        cells = [
            f"{runs[n].misses:,}; {runs[n].rejected:,}; {runs[n].rejected_below_threshold:,}; "
            f"{runs[n].rejected_repo_cap:,}"
            for n in ("bounded", "rendezvous-capacity", "random")
        ]
        peak = max(res.workload.demand) / (res.capacity or 1)
        ratio = runs["bounded"].misses / runs["random"].misses
        print(f"| {amplitude} | {pct(peak, 0)} | " + " | ".join(cells) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
