"""Regenerate the 27 BBH task configs from the published 3-shot CoT prompt files.

Maintainer tool, not used at run time: `python _generate_bbh.py DATA/bbh/cot-prompts`.
The exemplars are stored in the YAMLs (as lm-evaluation-harness does) so users who
read BBH from the hub need no prompt files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
PREFIX = "mkr_bbh_cot_fewshot"


def parse_prompt_file(text: str) -> tuple[str, list[dict]]:
    """Split a cot-prompts file into its task description and (input, target) exemplars."""
    body = text.split("-----\n", 1)[1]
    description, _, shots = body.partition("\n\nQ: ")
    samples = []
    for block in ("Q: " + shots).strip().split("\n\nQ: "):
        block = block.removeprefix("Q: ")
        question, _, answer = block.partition("\nA: Let's think step by step.")
        samples.append({"input": question, "target": answer.strip()})
    return description.strip() + "\n\n", samples


def main(prompt_dir: str) -> None:
    names = []
    for path in sorted(Path(prompt_dir).glob("*.txt")):
        name = path.stem
        description, samples = parse_prompt_file(path.read_text())
        config = {
            "task": f"{PREFIX}_{name}",
            "include": "_mkr_bbh_cot_fewshot_template_yaml",
            "dataset_kwargs": {"subset": name},
            "description": description,
            "doc_to_text": "Q: {{input}}\nA: Let's think step by step.\n",
            "fewshot_config": {"sampler": "first_n", "samples": samples},
        }
        out = HERE / f"{PREFIX}_{name}.yaml"
        out.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000))
        names.append(f"{PREFIX}_{name}")
    group = {
        "group": PREFIX,
        "task": names,
        "aggregate_metric_list": [
            {"metric": "exact_match", "aggregation": "mean", "weight_by_size": True, "filter_list": "get-answer"}
        ],
        "metadata": {"version": 1.0},
    }
    (HERE / f"_{PREFIX}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))


if __name__ == "__main__":
    main(sys.argv[1])
