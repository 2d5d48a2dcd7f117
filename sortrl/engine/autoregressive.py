"""The engine's second path: training an autoregressive policy family (`transformer`, or a plug-in's).

`sortrl.engine.train` hands a batch here when its model family is not
`prompt_only` (`sortrl.engine.models`). One epoch is the lecture's, as in the
folded path: sample `num_responses` responses per prompt, score them, turn
rewards into deltas, take `num_steps_per_epoch` Adam steps on those responses.
What differs is where the policy lives:

- sampling is token by token (`ModelFamily.generate`): token t of every response
  is drawn from pi(. | prompt, tokens < t) by inverting one uniform per
  (prompt, position, trial), drawn from the run's own generator (`rollout.invert`,
  the same float64 search as the folded path's drawn-ahead sampling, in the same
  [(batch pos trial)] order), so a run's trajectory never depends on its
  batch-mates;
- the old log-probs are the first inner step's own pass (the same parameters and responses), computed once with
  its graph, so the first step does not repeat it;
- log-probs come from one teacher-forced pass over the sampled responses
  (`ModelFamily.logits`), giving pi(. | prefix) at every sampled prefix:
  [run (batch trial) pos vocab]. Every response is its own row, so the folded
  objective of `sortrl.engine.objective` applies unchanged with one trial per
  row (each row's weights are its own response's: nothing is shared between
  the responses of a group, as autoregressive log-probs are not);
- the entropy (metric and bonus) is that of pi(. | prefix) at each sampled
  prefix; the KL is taken between pi and the reference's pi_ref(. | prefix) on
  the same prefixes (TRL/verl's per-token KL); greedy accuracy decodes token by
  token with argmax; `sft` teacher-forces the sorted answer.

Variants a family cannot train are refused by `RunConfig` before training
(`sortrl.engine.config._check_autoregressive`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

import pandas as pd
import torch
from torch import Tensor

from sortrl.engine import metrics
from sortrl.engine.batch import Batch, History, Progress, epoch_metrics, memory_rows, run_deltas, warn_empty_epoch
from sortrl.engine.config import RunConfig
from sortrl.engine.losses import KL_ESTIMATORS, KL_LOSS_AGG_MODES, LOSS_AGG_MODES, LOSS_MODES
from sortrl.engine.objective import Entropy, Kl, Policy, kl_in_loss, ratio_stats, sft_targets
from sortrl.engine.registry import checked
from sortrl.engine.rollout import (
    Rollout,
    Scorer,
    gather,
    grad_sq_norms,
    invert,
    per_run,
    uniforms,
    with_run_axis,
    zero_std,
)
from sortrl.engine.task import sorted_prompts
from sortrl.engine.transformer import Choose


def _rows(x: Tensor) -> Tensor:
    """[run batch trial ...] -> [run (batch trial) 1 ...]: every response its own row with one trial."""
    return x.flatten(1, 2).unsqueeze(2)


def _sampler(temperature: Tensor, u: Tensor):
    """`choose` for `generate`: token t of each response from softmax(logits / T) and u[..., t]; u [run batch trial pos]."""
    tempered = bool((temperature != 1).any())

    def choose(t: int, logits: Tensor) -> Tensor:
        if tempered:
            logits = logits / temperature[:, None, None, None]
        return invert(torch.softmax(logits, dim=-1), u[..., t])

    return choose


def _argmax(t: int, logits: Tensor) -> Tensor:
    return logits.argmax(dim=-1)


def greedy(state: Batch, prompts: Tensor) -> Tensor:
    """The argmax policy's response to each prompt, decoded token by token: [run batch pos]."""
    return state.family.generate(state.params, state.c0, prompts, 1, _argmax)[:, :, 0]


def _and_argmax(choose: Choose, trials: int) -> Choose:
    """`choose` for `trials` + 1 responses per prompt: the first `trials` by `choose`, the last the argmax (greedy)."""

    def both(t: int, logits: Tensor) -> Tensor:
        return torch.cat([choose(t, logits[:, :, :trials]), logits[:, :, trials:].argmax(dim=-1)], dim=2)

    return both


def draw(state: Batch, prompts: Tensor, u: Tensor, params=None, temperature=None, with_greedy=False) -> Tensor:
    """`num_responses` sampled responses per prompt [run batch trial pos], from uniforms u [run (batch pos trial)].

    `with_greedy`: one more response per prompt, last, the argmax policy's (decoded in the same passes: its prefixes
    are mostly the sampled ones, so it costs few rows): [run batch trial+1 pos]."""
    params = state.params if params is None else params
    temperature = state.numbers["temperature"] if temperature is None else temperature
    runs, batch, width, trials = len(u), prompts.shape[-2], state.c0.response_length, state.c0.num_responses
    u = u.reshape(runs, batch, width, trials).transpose(2, 3)  # [run batch trial pos]
    choose = _sampler(temperature, u)
    if with_greedy:
        return state.family.generate(params, state.c0, prompts, trials + 1, _and_argmax(choose, trials))
    return state.family.generate(params, state.c0, prompts, trials, choose)


def log_softmax(z: Tensor) -> Tensor:
    """log softmax over the last axis, z - max - log sum exp(z - max), one vocabulary entry at a time.

    For a vocabulary of a few tokens `torch.log_softmax` spends its time per row: on one inner step's log-probs of
    1,024 transformer runs ([1024 30 3 5]) forward and backward took 10.6 ms CPU, these element-wise passes 6.0 ms
    (equal within 5e-7). Batch-invariant by construction: each row's numbers come from that row alone.
    """
    columns = z.unbind(dim=-1)
    top = columns[0]
    for c in columns[1:]:
        top = torch.maximum(top, c)
    top = top.detach()  # the shift cancels in the value; no gradient through the max (as torch's own)
    total = torch.exp(columns[0] - top)
    for c in columns[1:]:
        total = total + torch.exp(c - top)
    return z - (top + torch.log(total))[..., None]


def log_probs(state: Batch, params, prompts: Tensor, responses: Tensor) -> Tensor:
    """log pi(. | prompt, prefix) of the tempered policy at every position, teacher-forced: [run (batch trial) pos vocab]."""
    return log_softmax(state.temper(state.family.logits(params, state.c0, prompts, responses).flatten(1, 2)))


def resample(state: Batch, scorer: Scorer, roll: Rollout, prompts: Tensor) -> tuple[Rollout, Tensor]:
    """DAPO re-sampling (`rollout.resample_zero_std`'s rule) for an autoregressive policy: each round, a run with a
    zero-std group (and rounds left) draws a fresh group for every prompt from its own generator (batch x pos x
    trial uniforms) and keeps it where its group was zero-std. Returns the new rollout and each run's rounds."""
    max_batches = state.numbers["max_gen_batches"]
    runs = len(state.runs)
    rounds = torch.ones(runs, dtype=torch.long)
    per_round = prompts.shape[-2] * state.c0.response_length * state.c0.num_responses
    for k in range(1, int(max_batches.max())):
        again = zero_std(roll.rewards) & (max_batches > k)[:, None]  # [run batch]
        todo = again.any(dim=1).nonzero().flatten()
        if not len(todo):
            break
        u = uniforms([state.generators[r] for r in todo.tolist()], per_round)
        sub = {name: p.detach()[todo] for name, p in state.params.items()}
        fresh = draw(
            state, prompts[todo] if prompts.dim() == 3 else prompts, u, sub, state.numbers["temperature"][todo]
        )
        responses = roll.responses.clone()
        responses[todo] = torch.where(again[todo][:, :, None, None], fresh, responses[todo])
        rounds[todo] += 1
        roll = scorer.score(prompts, responses)
    return roll, rounds


class Epoch(NamedTuple):
    """One epoch's prompts, teacher-forced inputs and loss terms."""

    prompts: Tensor  # [batch pos] shared, or [run batch pos]
    inputs: Tensor  # [run batch trial pos]: the responses the loss reads (the sorted answers for `sft`)
    policy: Policy
    entropy: Entropy | None
    kl: Kl | None
    metrics: dict[str, Tensor]
    first: Tensor | None  # the first inner step's log-probs, graph kept: the pass `old` came from (None for `sft`)
    greedy: Tensor | None  # [run batch pos] the argmax policy's answers to the training prompts before the steps


class Sampled(NamedTuple):
    """An epoch's prompts and sampled responses (`sample_epoch`)."""

    prompts: Tensor  # [batch pos] shared, or [run batch pos] (per-run minibatches)
    picks: Tensor | None  # [run batch] each run's minibatch of prompt indices, or None (every prompt)
    first: Rollout  # the first draw (what the sampled-response metrics describe)
    roll: Rollout  # what training uses: the first draw, or DAPO's re-sampled one
    rounds: Tensor | None  # [run] DAPO's generation rounds, or None (no re-sampling)
    greedy: Tensor | None  # [run batch pos] the argmax policy's responses, decoded beside the first draw, or None

    def reordered(self, index: Tensor) -> Sampled:
        """The same epoch for a batch whose runs are reordered by `index` (`Batch.reorder`)."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        prompts = self.prompts[index] if self.prompts.dim() == 3 else self.prompts
        first, roll = (Rollout(*(t[index] for t in r)) for r in (self.first, self.roll))
        return Sampled(prompts, pick(self.picks), first, roll, pick(self.rounds), pick(self.greedy))


def sample_epoch(state: Batch, epoch: int, with_greedy: bool = False) -> Sampled:
    """The epoch's prompts (a per-run minibatch when `prompts_per_epoch` is set) and responses, sampled token by token
    and scored (DAPO re-sampling included); `with_greedy` and every training prompt in the epoch: the argmax
    policy's responses too, decoded in the same passes. Then, for speed only, the batch's runs are reordered by the
    family's `order` (`sortrl.engine.models`), so the inner steps' passes read each group of runs as one block."""
    c0 = state.c0
    prompts, picks = state.task.train, None
    if c0.prompts_per_epoch is not None and c0.prompts_per_epoch < len(prompts):
        size, k = len(prompts), c0.prompts_per_epoch  # per-run minibatch, drawn before the epoch's responses
        picks = torch.stack([torch.randperm(size, generator=g)[:k] for g in state.generators])
        prompts = prompts[picks]  # [run batch pos]
    u = state.sampling_draws(epoch)
    if u is None:
        u = uniforms(state.generators, prompts.shape[-2] * c0.response_length * c0.num_responses)
    scorer = state.scorer()
    with_greedy = with_greedy and picks is None
    drawn = draw(state, prompts, u, with_greedy=with_greedy)  # [run batch trial(+1) pos]
    greedy_responses = drawn[:, :, -1] if with_greedy else None
    first = roll = scorer.score(prompts, drawn[:, :, : c0.num_responses].contiguous())
    rounds = None
    if state.resample:
        roll, rounds = resample(state, scorer, roll, prompts)
    out = Sampled(prompts, picks, first, roll, rounds, greedy_responses)
    if state.family.order is not None:
        index = state.family.order(c0, roll.responses)
        if not torch.equal(index, torch.arange(len(index))):
            state.reorder(index)
            out = out.reordered(index)
    return out


def setup_epoch(state: Batch, epoch: int, with_greedy: bool = False) -> Epoch:
    """Sample and score the epoch's responses token by token, turn rewards into deltas, prepare every loss term.
    `with_greedy`: `Epoch.greedy` too (the argmax policy's responses to the training prompts, before the steps)."""
    prompts, picks, first, roll, rounds, greedy_responses = sample_epoch(state, epoch, with_greedy)
    c0, n, scorer = state.c0, state.numbers, state.scorer()  # after `sample_epoch`, which may reorder the runs
    if with_greedy and greedy_responses is None:  # a per-run minibatch was sampled: decoded on its own
        greedy_responses = greedy(state, state.task.train)
    runs, vocab, width = len(state.runs), c0.num_tokens, c0.response_length
    kept = ~(zero_std(roll.rewards) & n["filter"][:, None])  # [run batch]
    if state.filtering:
        warn_empty_epoch(state, kept, epoch)
    mask = (roll.action & kept[:, :, None, None]).float()
    omega = per_run(state.names["loss_agg_mode"], LOSS_AGG_MODES, {"mask": mask}, kind="loss_agg_mode", max_len=width)
    mode = LOSS_MODES[c0.loss_mode]
    mode = mode._replace(fn=checked("loss_mode", c0.loss_mode, mode.fn))
    # the old log-probs are the first inner step's own pass (same parameters, same responses): computed once, with
    # its graph, so the first step does not repeat it (bit for bit the same numbers; `sft` reads other inputs)
    with torch.set_grad_enabled(not mode.supervised):
        first_step = log_probs(state, state.params, prompts, roll.responses)  # [run (batch trial) pos vocab]
    old = first_step.detach()
    rows = Rollout(*map(_rows, roll))  # [run (batch trial) 1 ...]

    rewards, kl, kl_metric = roll.rewards, None, None
    if state.use_kl:
        period = c0.compute_ref_model_period
        if (epoch == 0) if period == 0 else (epoch % period == 0):
            state.ref = {k: v.detach().clone() for k, v in state.params.items()}
        ref = log_probs(state, state.ref, prompts, roll.responses)
        kl_omega = per_run(
            state.names["kl_loss_agg_mode"], KL_LOSS_AGG_MODES, {"mask": mask}, kind="loss_agg_mode", max_len=width
        )
        estimator = checked("kl_estimator", c0.kl_estimator, KL_ESTIMATORS[c0.kl_estimator])
        in_reward = (n["kl_penalty"] != 0) & n["kl_in_reward"]
        if bool(in_reward.any()):  # verl apply_kl_penalty: r -= beta * sum_t k(pi_old, pi_ref) over the response
            per_token = estimator(gather(old, rows.responses), gather(ref, rows.responses)).view_as(mask)
            rewards = rewards - torch.where(in_reward, n["kl_penalty"], 0.0)[:, None, None] * (
                per_token * roll.action
            ).sum(-1)
            kl_metric = torch.where(in_reward, (kl_omega * per_token).sum(dim=(1, 2, 3)), math.nan)
        in_loss = ((n["kl_penalty"] != 0) & ~n["kl_in_reward"]).nonzero().flatten()
        if len(in_loss):
            sequence_level = c0.importance_sampling_level == "sequence"
            kl = kl_in_loss(
                in_loss, rows.responses, rows.action, _rows(kl_omega), ref, old, n, estimator, sequence_level, vocab
            )

    available: dict[str, Tensor] = {}
    if "greedy_rewards" in state.extras:
        on_prompts = greedy_responses if greedy_responses is not None and picks is None else greedy(state, prompts)
        available["greedy_rewards"] = scorer.score(prompts, on_prompts[:, :, None]).rewards
    if "grad_sq_norms" in state.extras:
        available["grad_sq_norms"] = grad_sq_norms(torch.exp(old), rows.responses, rows.action).view_as(rewards)
    if "action_counts" in state.extras:
        available["action_counts"] = mask.sum(dim=-1)
    deltas = run_deltas(state.names["deltas_mode"], rewards, available)

    inputs, targets = roll.responses, None
    if mode.supervised:  # teacher-forced on the sorted answers (padding read as token 0; it has no weight)
        answers = sorted_prompts(with_run_axis(prompts)).clamp(min=0)
        inputs = answers[:, :, None].expand(runs, -1, -1, -1)
        targets = sft_targets(prompts, runs, vocab)  # [run batch pos vocab] = one row per prompt
    sequence_level = c0.importance_sampling_level == "sequence"
    policy = Policy(mode, sequence_level, rows, _rows(deltas), _rows(omega), _rows(mask), old, targets)
    entropy = None
    if state.use_entropy:
        chosen = (n["entropy_coeff"] != 0).nonzero().flatten()
        entropy = Entropy(chosen, _rows(omega)[chosen].sum(dim=2), n["entropy_coeff"][chosen])
    first_lp = old if rounds is None else log_probs(state, state.params, prompts, first.responses)
    first_lp = first_lp.view(*first.responses.shape, vocab)
    sampled = metrics.sampled(first, prompts, picks, first_lp, len(state.task.train), per_response=True)
    found = epoch_metrics(state, sampled, roll, deltas, omega, picks, kl_metric, rounds)
    first_step = None if mode.supervised else first_step
    return Epoch(prompts, inputs, policy, entropy, kl, found, first_step, greedy_responses)


def inner_steps(state: Batch, ep: Epoch) -> dict[str, Tensor]:
    """`num_steps_per_epoch` Adam steps on the epoch's responses (as `train._inner_steps`, log-probs teacher-forced)."""
    clip = state.clip(ep.policy.clip_shape())
    sums: defaultdict[str, Tensor] = defaultdict(lambda: torch.zeros(len(state.runs)))
    params = list(state.params.values())
    for k in range(state.c0.num_steps_per_epoch):
        lp = ep.first if k == 0 and ep.first is not None else log_probs(state, state.params, ep.prompts, ep.inputs)
        run_loss, ratio = ep.policy.loss(lp, clip)
        if ep.entropy is not None:
            run_loss = run_loss.index_add(0, ep.entropy.runs, -ep.entropy.coeff * ep.entropy.value(lp))
        if ep.kl is not None:
            kl = ep.kl.value(lp)
            run_loss = run_loss.index_add(0, ep.kl.runs, ep.kl.coeff * kl)
            sums["kl"] = sums["kl"].index_add(0, ep.kl.runs, kl.detach())
        grads = torch.autograd.grad(run_loss.sum(), params)
        # per run, each tensor's sum of squares along its own row, added tensor by tensor: a sum over a stacked
        # [tensor run] axis changes its order with the number of runs at this many tensors (the tests caught it)
        squares = torch.zeros(len(state.runs))
        for rows in map(memory_rows, grads):
            squares = squares + (rows * rows).sum(dim=1)
        sums["grad_norm"] += squares.sqrt()
        state.optimizer.step(list(grads))
        sums["loss"] += run_loss.detach()
        if ratio is not None:
            ratio_stats(sums, ep.policy, ratio, clip)
    return sums


def evaluate(state: Batch) -> dict[str, Tensor]:
    """Held-out metrics: sampled mean reward (the eval generators' uniforms) and greedy accuracy (argmax decoding)."""
    prompts, c0 = state.task.eval, state.c0
    u = uniforms(state.eval_generators, len(prompts) * c0.response_length * c0.num_responses)
    roll = state.scorer().score(prompts, draw(state, prompts, u))
    out = {"eval/mean_reward": roll.scores.mean(dim=(1, 2))}
    out.update(metrics.greedy_of(c0.lengths, prompts, greedy(state, prompts), "eval/"))
    return out


def train_batch(
    state: Batch,
    configs: list[RunConfig],
    progress: Progress | None,
    with_config: bool,
    done: Callable[[Batch], None] | None = None,
) -> pd.DataFrame:
    """Train one batch of an autoregressive family (the loop of `train._train_batch`); one row per (run, epoch).

    `done(state)`, if given, is called with the trained batch before its table is built."""
    c0 = configs[0]
    num_epochs, steps = c0.num_epochs, c0.num_steps_per_epoch
    train_prompts = state.task.train
    history = History(state, metrics.names(c0, state.task, state.resample, False), num_epochs)
    record = history.record
    step_losses = torch.zeros(len(configs))

    for epoch in range(num_epochs + 1):
        with torch.no_grad():
            alive = torch.isfinite(step_losses)
            for t in state.params.values():  # one pass each: the extremes are finite iff every entry is (NaN spreads)
                low, high = torch.aminmax(t.reshape(len(t), -1), dim=1)
                alive &= torch.isfinite(low) & torch.isfinite(high)
            if not bool(alive.all()):
                history.drop_diverged(alive, epoch)
                if len(state.runs) == 0:
                    break
            if epoch > 0 and len(state.task.eval) and (epoch % c0.eval_every == 0 or epoch == num_epochs):
                record(epoch - 1, evaluate(state))
            if epoch == num_epochs:
                if epoch > 0:
                    record(epoch - 1, metrics.greedy_of(c0.lengths, train_prompts, greedy(state, train_prompts), ""))
                break
            # the previous epoch's greedy accuracy: the same parameters as this epoch's sampling, decoded with it
            ep = setup_epoch(state, epoch, with_greedy=epoch > 0)
            if ep.greedy is not None:
                record(epoch - 1, metrics.greedy_of(c0.lengths, train_prompts, ep.greedy, ""))
            record(epoch, ep.metrics)
        sums = inner_steps(state, ep)
        step_losses = sums["loss"]
        if progress is not None:
            progress(len(state.runs) * steps)
        with torch.no_grad():
            if ep.kl is not None:
                record(epoch, {"kl": sums.pop("kl") / steps}, runs=ep.kl.runs)
            record(epoch, {name: value_ / steps for name, value_ in sums.items()})

    if done is not None:
        done(state)
    return history.frame(configs, steps, with_config)
