"""How the rollouts per estimate (k) change the loop's labels: one labelling phase of a finished run, again.

Takes the sampled trajectories that a run's ``labels_<t>`` phase labelled (its input: the gold solutions
and the expansions left out, the labels dropped), and labels them again with the run's strategy at each
``--k``, from the same reasoner (``M_{t-1}``) and verifier (``V_{t-1}``), at the run's sampling settings.
Every result is scored against the task's exact oracle (:func:`sapo.eval.label_agreement`, through ``LabelledData.against_oracle``), beside what it
cost. The point: under the hard rule an estimate is 0 when all k completions from a prefix fail, and a weak
reasoner fails often from right prefixes too, so small k labels right steps wrong.

    python benchmarks/label_k.py --run runs/demo --phase 1 --k 4 8 16 --out docs/benchmarks/label_k
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch
from labels_vs_oracle import run_task, split_labels  # the sibling script: a run's task and labels

from sapo.data.trajectory import read_jsonl
from sapo.evolution.data import LabelledData, TaskPrompts
from sapo.models.backbone import BackboneSpec
from sapo.models.verifier import PRMVerifier
from sapo.rollout import Sampler, TaskRolloutSampler
from sapo.supervision import FirstErrorSupervision


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--phase", type=int, default=1, help="t of labels_<t> (t >= 1: first-error labels)")
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype", default="bfloat16", help="of the reasoner and verifier (float32 on AVX2-only CPUs)"
    )
    parser.add_argument("--out", default="docs/benchmarks/label_k")
    args = parser.parse_args()
    if args.phase < 1:
        parser.error("--phase: labels_0 is binary search without a verifier; give t >= 1")

    run = Path(args.run)
    manifest = json.loads((run / "manifest.json").read_text())
    settings = manifest["settings"]["model"]["init_args"]
    task, questions, gold = run_task(manifest)
    by_id = {q.id: q for q in questions}
    skip = {(g.question_id, tuple(g.steps)) for g in gold}
    labelled = read_jsonl(run / f"labels_{args.phase}.jsonl") + read_jsonl(
        run / f"dropped_{args.phase}.jsonl"
    )
    inputs = [
        dataclasses.replace(t, labels=None, label_source=None, meta={})
        for t in split_labels(labelled).labelled
        if (t.question_id, tuple(t.steps)) not in skip
    ]
    reasoner = run / ("sft/reasoner" if args.phase == 1 else f"iteration_{args.phase - 1}/reasoner")
    verifier_dir = run / f"verifier_{args.phase - 1}"
    sampling = settings["sampling"]
    strategy_spec = settings["labelling"]["strategy"]
    if not strategy_spec["class_path"].endswith("FirstErrorSupervision"):
        raise SystemExit(
            f"{run}: labels_{args.phase} used {strategy_spec['class_path']}, not first-error labels"
        )
    init_args = dict(strategy_spec.get("init_args", {}))

    dtype = args.dtype
    model, tokenizer = BackboneSpec(str(reasoner), dtype=dtype).load()
    model.eval()
    verifier = PRMVerifier.from_pretrained(
        verifier_dir, backbone_options={"dtype": dtype}, prompt=TaskPrompts(tokenizer, [(task, questions)])
    )
    verifier.eval()

    rows = []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        for k in args.k:
            sampler = Sampler(
                model,
                tokenizer,
                max_new_tokens=sampling["max_new_tokens"],
                temperature=sampling["temperature"],
                top_p=sampling["top_p"],
                batch_size=sampling["batch_size"],
                seed=args.seed,
            )
            strategy = FirstErrorSupervision(**{**init_args, "k": k})
            started = time.perf_counter()
            out = strategy.label(inputs, TaskRolloutSampler(sampler, task, by_id), verifier)
            seconds = time.perf_counter() - started
            agreement = LabelledData(out.labelled, out.expanded).against_oracle(task, questions)
            row = {
                "k": k,
                "labelled": len(out.labelled),
                "expanded": len(out.expanded),
                "dropped": len(out.dropped),
                "sampled": agreement.get("sampled"),
                "expansions": agreement.get("expanded"),
                "completions": out.cost.completions,
                "generated_tokens": out.cost.generated_tokens,
                "seconds": round(seconds, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    def cell(agreement: dict | None) -> str:
        if agreement is None:
            return "–"
        return (
            f"{agreement['first_error_accuracy']:.3f} of {agreement['trajectories']} "
            f"({agreement['earlier']} earlier, {agreement['later']} later)"
        )

    command = "python benchmarks/label_k.py " + " ".join(
        f"--{name} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        for name, value in vars(args).items()
    )
    lines = [
        f"# labels_{args.phase} of {run} again, at several k",
        "",
        f"{len(inputs)} sampled trajectories (the phase's input), reasoner {reasoner}, verifier {verifier_dir}, "
        f"{strategy_spec['class_path'].rsplit('.', 1)[1]}({', '.join(f'{a}={b}' for a, b in init_args.items() if a != 'k')}), "
        f"sampling T={sampling['temperature']}, {sampling['max_new_tokens']} new tokens; {date.today()}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}.",
        "",
        "| k | labelled | expanded | dropped | labels vs oracle: sampled | expansions | completions "
        "| generated tokens | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['k']} | {r['labelled']} | {r['expanded']} | {r['dropped']} | {cell(r['sampled'])} "
            f"| {cell(r['expansions'])} | {r['completions']} | {r['generated_tokens']} | {r['seconds']} |"
            for r in rows
        ),
        "",
        f"Command: `{command}`",
    ]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"labels_{args.phase}.json").write_text(
        json.dumps({"command": command, "rows": rows}, indent=1)
    )
    (out_dir / f"labels_{args.phase}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
