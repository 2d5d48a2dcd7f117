"""Issue 22's peer table: each section-3 item's sortrl function against the peer's executed function.

Needs a scratch environment with TRL 1.16.0 and verl 0.9.1 installed (never a sortrl dependency), by default
/tmp/peer-venv (`--peer-python`); without it the script says so and exits 0. Run from the repository root with
the project's Python:

    python tools/peer_table.py            # prints the markdown table

It runs itself again under the peer environment's Python, with this checkout and the project's site-packages
(einops, jaxtyping: pure Python) after the peer's own (its torch, TRL, verl). verl's functions are executed from
its installed source (`verl.trainer.ppo.core_algos`, taken out by name with its helpers), since importing the
verl package needs ray. On one random case (fixed seed: 4 prompts x 4 responses x 5 positions, vocabulary 6,
responses of random length as with EOS, a prompt whose group has equal rewards), each row gives the largest
|difference| of the loss and of its gradient, the way sortrl computed it before issue 22 (the issue's figures came
from its training path) and now.
"""

from __future__ import annotations

import argparse
import ast
import os
import site
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = "/tmp/peer-venv/bin/python"
INNER = "SORTRL_PEER_TABLE_INNER"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-python", default=PEER_PYTHON, help="Python of an environment with TRL and verl")
    args = parser.parse_args()
    if os.environ.get(INNER):
        table()
        return
    probe = [args.peer_python, "-c", "import trl, importlib.util as u; assert u.find_spec('verl')"]
    try:
        found = subprocess.run(probe, capture_output=True, timeout=120).returncode == 0
    except OSError:
        found = False
    if not found:
        print(f"skipped: needs {args.peer_python} with TRL 1.16.0 and verl 0.9.1 installed (a scratch environment)")
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{INNER: os.pathsep.join(site.getsitepackages())})
    sys.exit(subprocess.run([args.peer_python, __file__], env=env).returncode)


def verl_functions(names: set[str]) -> dict:
    """verl's `names` from its installed core_algos.py (and torch_functional.py's helpers), executed as written."""
    import importlib.util
    from typing import Any, Optional

    import torch

    source = Path(importlib.util.find_spec("verl").submodule_search_locations[0])

    def load(path: str, wanted: set[str], namespace: dict) -> dict:
        tree = ast.parse((source / path).read_text())
        body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
        for n in body:
            n.decorator_list = []
        exec(compile(ast.Module(body=body, type_ignores=[]), str(source / path), "exec"), namespace)  # noqa: S102
        return namespace

    helpers = load("utils/torch_functional.py", {"masked_sum", "masked_mean", "clip_by_value"}, {"torch": torch})
    verl_F = SimpleNamespace(**{k: helpers[k] for k in ("masked_sum", "masked_mean", "clip_by_value")})
    return load(
        "trainer/ppo/core_algos.py", names, {"torch": torch, "Optional": Optional, "Any": Any, "verl_F": verl_F}
    )


def trl_loss(logps, old, ref, mask, advantages, beta: float, level: str, bias: bool):
    """TRL 1.16.0's `GRPOTrainer._compute_loss` (executed) with GRPOConfig's defaults but beta, level and the bias
    correction; the model's forward replaced by the given per-token log-probs [rows pos]."""
    from collections import defaultdict

    import torch
    from trl import GRPOTrainer

    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=bias, delta=None, steps_per_generation=1), loss_type="dapo",
        epsilon_low=0.2, epsilon_high=0.2, use_vllm=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        accelerator=SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x),
        _metrics=defaultdict(lambda: defaultdict(list)), _entropy_bonus_enabled=False, aux_loss_enabled=False,
    )  # fmt: skip
    rows = len(mask)
    inputs = dict(
        prompt_ids=torch.zeros(rows, 1, dtype=torch.long), prompt_mask=torch.ones(rows, 1),
        completion_ids=torch.zeros_like(mask, dtype=torch.long), completion_mask=mask, advantages=advantages,
        old_per_token_logps=old, ref_per_token_logps=ref, num_items_in_batch=mask.sum(),
    )  # fmt: skip
    return GRPOTrainer._compute_loss(trainer, None, inputs)


def gap(a, b, leaf) -> tuple[float, float]:
    """max |a - b| and max |d a / d leaf - d b / d leaf|."""
    import torch

    (ga,) = torch.autograd.grad(a, leaf, retain_graph=True)
    (gb,) = torch.autograd.grad(b, leaf, retain_graph=True)
    return abs(a.item() - b.item()), (ga - gb).abs().max().item()


def fmt(pair: tuple[float, float]) -> str:
    return f"loss {pair[0]:.1e}, grad {pair[1]:.1e}"


def table() -> None:
    sys.path.extend(os.environ[INNER].split(os.pathsep))  # einops, jaxtyping after the peer's own packages
    import warnings

    import torch
    import trl

    from sortrl.engine.config import RunConfig, make_config, peer_differences
    from sortrl.engine.losses import kl_k3, token_mean
    from sortrl.engine.objective import ValueLoss, kl_in_loss
    from sortrl.engine.registry import ConfigError

    torch.manual_seed(0)
    batch, trial, pos, vocab, beta = 4, 4, 5, 6, 0.04
    logits = torch.randn(batch, pos, vocab, requires_grad=True)
    with torch.no_grad():
        old_lp = torch.log_softmax(logits + 0.3 * torch.randn_like(logits), -1)
        ref_lp = torch.log_softmax(logits + 0.5 * torch.randn_like(logits), -1)
    responses = torch.randint(vocab, (batch, trial, pos))
    lengths = torch.randint(1, pos + 1, (batch, trial, 1))
    action = torch.arange(pos) < lengths  # [batch trial pos] tokens up to EOS
    lp = torch.log_softmax(logits, -1)

    def per_token(x):  # [batch pos vocab] -> [rows pos], rows = batch * trial (TRL's completions)
        return x[:, None].expand(-1, trial, -1, -1).gather(-1, responses[..., None]).squeeze(-1).reshape(-1, pos)

    mask = action.reshape(-1, pos).float()
    omega = token_mean(action[None].float(), pos)  # [1 batch trial pos]: TRL's dapo / verl's token-mean

    def sortrl_kl(bias: bool, sequence_level: bool):
        numbers = {"kl_penalty": torch.tensor([beta]), "kl_bias_correction": torch.tensor([bias])}
        kl = kl_in_loss(
            torch.tensor([0]), responses[None], action[None], omega, ref_lp[None], old_lp[None], numbers, kl_k3,
            sequence_level, vocab,
        )  # fmt: skip
        return (kl.coeff * kl.value(lp[None])).sum()

    def trl_kl(level: str, bias: bool):  # advantages 0: TRL's loss is its KL term alone
        zero = torch.zeros(batch * trial)
        return trl_loss(per_token(lp), per_token(old_lp), per_token(ref_lp), mask, zero, beta, level, bias)

    rows = []
    # 1. the trl recipe: TRL's GRPOConfig defaults, executed
    with warnings.catch_warnings():  # transformers' own deprecation notes
        warnings.simplefilter("ignore")
        config = trl.GRPOConfig(output_dir="/tmp/peer-table-trl", use_cpu=True, report_to=[])
    theirs = {"scale_rewards": "group", "loss_type": "dapo", "epsilon": 0.2, "beta": 0.0,
              "use_bias_correction_kl": True, "importance_sampling_level": "token"}  # fmt: skip
    executed = {k: getattr(config, k) for k in theirs}
    recipe = make_config("trl")
    ours = {"scale_rewards": recipe.deltas_mode == "normalized_rewards", "loss_type": recipe.loss_agg_mode,
            "epsilon": recipe.epsilon, "beta": recipe.kl_penalty, "use_bias_correction_kl": recipe.use_bias_correction_kl,
            "importance_sampling_level": recipe.importance_sampling_level}  # fmt: skip
    same = executed == theirs and ours == {**theirs, "scale_rewards": True, "loss_type": "token-mean"}
    grpo = make_config("grpo")
    rows.append((
        "`trl` recipe = TRL's defaults (use_bias_correction_kl)", "`trl.GRPOConfig()` defaults",
        f"no such recipe; `grpo` has use_bias_correction_kl={grpo.use_bias_correction_kl}, TRL True",
        "all 6 equal" if same else f"DIFFER: {executed} vs {ours}",
    ))  # fmt: skip
    # 2. the KL term at beta 0.04, token level: grpo's form (no bias correction) and the trl recipe's
    before = gap(sortrl_kl(False, False), trl_kl("token", True), logits)
    after = gap(sortrl_kl(True, False), trl_kl("token", True), logits)
    plain = gap(sortrl_kl(False, False), trl_kl("token", False), logits)
    rows.append((
        "KL in the loss, beta 0.04, token level", "`GRPOTrainer._compute_loss` (dapo)",
        f"grpo vs TRL's default: issue grad 0.77 (training path); here {fmt(before)}",
        f"trl recipe: {fmt(after)}; grpo vs TRL use_bias_correction_kl=False: {fmt(plain)}",
    ))  # fmt: skip
    # 3. the bias-corrected KL at sequence level (GSPO): the token ratio before, the sequence ratio now
    before = gap(sortrl_kl(True, False), trl_kl("sequence", True), logits)
    after = gap(sortrl_kl(True, True), trl_kl("sequence", True), logits)
    rows.append((
        "bias-corrected KL, importance_sampling_level sequence", "`GRPOTrainer._compute_loss` (sequence)",
        f"issue loss 1.9e-3, grad 1.8e-2; here {fmt(before)}", fmt(after),
    ))  # fmt: skip
    # 4. the critic's value loss: verl's compute_value_loss (token-mean over the loss tokens, cliprange_value 0.5)
    verl = verl_functions({"agg_loss", "compute_value_loss", "kl_penalty", "kl_penalty_forward"})
    returns = torch.randn(batch, trial)
    returns[0] = 1.0  # a group of equal rewards: the zero-std filter drops it (verl: out of the batch)
    kept = (returns.max(-1).values != returns.min(-1).values)[:, None, None]
    loss_tokens = (action & kept).float()  # [batch trial pos]
    v_old = torch.randn(batch)
    v = (v_old + torch.randn(batch)).requires_grad_()  # the head moved since sampling: clipping matters

    def grid(x):  # V per prompt -> per token rows
        return x[:, None, None].expand(batch, trial, pos).reshape(-1, pos)

    theirs_v, _ = verl["compute_value_loss"](
        grid(v), returns[..., None].expand(batch, trial, pos).reshape(-1, pos), grid(v_old),
        loss_tokens.reshape(-1, pos), 0.5, "token-mean",
    )  # fmt: skip
    weights = token_mean(loss_tokens[None], pos).sum(-1)  # critic_loss_agg_mode actor (token-mean), filter applied
    now = ValueLoss(returns[None], v_old[None, :, None], torch.tensor([0.5]), weights, torch.tensor([False]))
    old = ValueLoss(returns[None], v_old[None, :, None], None, None, torch.tensor([True]))  # response-mean, no clip
    before = gap(old.value(v[None, :, None]).sum(), theirs_v, v)
    after = gap(now.value(v[None, :, None]).sum(), theirs_v, v)
    rows.append((
        "critic value loss (EOS, filter, cliprange_value 0.5)", "verl `compute_value_loss` (`agg_loss`)",
        f"issue grad 1.69 / 1.0 / 4.4 (token-mean / filter / clip); here {fmt(before)}",
        f"critic_loss_agg_mode=actor, cliprange_value=0.5: {fmt(after)} (default response-mean kept, documented)",
    ))  # fmt: skip
    # 5. k3: verl's clamped low_var_kl; TRL's unclamped k3
    d = torch.linspace(-15, 15, 3001)
    a, b = torch.zeros_like(d), d  # log pi = 0, log pi_ref = d
    k3 = kl_k3(a, b)
    verl_k3 = verl["kl_penalty_forward"](a, b, "low_var_kl")
    trl_k3 = torch.exp(b - a) - (b - a) - 1
    differ = d[(k3 - trl_k3).abs() > 1e-4]
    rows.append((
        "k3 estimator's clamp", "verl `kl_penalty(low_var_kl)`; TRL's k3 in `_compute_loss`",
        "verl's clamp, undocumented against TRL",
        f"verl: max diff {(k3 - verl_k3).abs().max().item():.1e} on d in [-15, 15]; TRL: differs only where k3 > 10 "
        f"(d < {differ[differ < 0].max().item():.2f} or d > {differ[differ > 0].min().item():.2f}), documented",
    ))  # fmt: skip

    # 6-8. refused or warned with one line
    def refusal(**fields) -> str:
        try:
            RunConfig(**fields)
        except ConfigError as err:
            return f"refused: `{str(err)[:90]}...`" if len(str(err)) > 90 else f"refused: `{err}`"
        return "ACCEPTED"

    def warned(**fields) -> str:
        lines = peer_differences(RunConfig(**fields))
        return "; ".join(f"warned (one line, {k})" for k in lines) or "NOT WARNED"

    rows.append((
        "optimal_baseline with num_responses 1", "verl `compute_optimal_token_baseline_advantage` (weights)",
        "deltas 0, no learning, silent", refusal(deltas_mode="optimal_baseline", num_responses=1),
    ))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kl_reward = [warned(deltas_mode=m, kl_penalty=0.1, use_kl_in_reward=True) for m in ("remax", "critic")]
    rows.append((
        "use_kl_in_reward with remax / critic (GAE)",
        "verl `apply_kl_penalty`, `compute_remax_outcome_advantage`, `compute_gae_advantage_return`",
        "per-token returns differ, undocumented", " / ".join(kl_reward),
    ))  # fmt: skip
    rows.append((
        "max_num_gen_batches (DAPO filter)",
        "verl's DAPO recipe trainer (`recipe/dapo`; not in the wheel, not executed)",
        "an epoch could train on 0 prompts, silently; G=1 trained nothing",
        f"{warned(filter_zero_std_groups=True)}; an epoch that keeps no prompt: EmptyEpochWarning; G=1: "
        + refusal(filter_zero_std_groups=True, num_responses=1, max_num_gen_batches=2),
    ))  # fmt: skip
    print(f"TRL {trl.__version__}, verl (source) {verl_version()}, torch {torch.__version__}\n")
    print("| item | peer function | before | after |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def verl_version() -> str:
    from importlib.metadata import version

    return version("verl")


if __name__ == "__main__":
    main()
