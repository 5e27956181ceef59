"""``npcrl train`` and ``npcrl reward-model train | score``: offline learning from play logs. The
trainer needs torch (npcrl[train]), so it is imported only when one of these commands runs."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from npcrl.cli.args import add_command, positive_int

if TYPE_CHECKING:
    from npcrl.train.config import TrainConfig


def load_config(args: argparse.Namespace) -> TrainConfig:
    """The ``--config`` file (or the defaults), with ``--seed`` in place of its seed."""
    from npcrl.train.config import load_train_config

    config = load_train_config(args.config)
    if args.seed is not None:
        config.seed = args.seed
        config.validate()
    return config


def cmd_train(args: argparse.Namespace) -> int:
    """Offline PPO from play logs; under torchrun every rank runs this and rank 0 writes the outputs."""
    from npcrl.train.run import train

    personas: tuple[Any, ...] = ()
    if args.personas:
        from npcrl.agent.persona import load_personas

        personas = tuple(load_personas(args.personas).values())
    result = train(
        args.logs,
        args.bundle,
        args.out,
        load_config(args),
        base_model=args.base_model,
        resume=args.resume,
        progress=not args.no_progress,
        personas=personas,
    )
    if result is not None:
        outputs = {
            "checkpoint": str(result.checkpoint),
            "bundle": str(result.bundle) if result.bundle else None,
            "report": str(result.report / "report.md"),
        }
        print(json.dumps(outputs))
    return 0


def cmd_reward_model_train(args: argparse.Namespace) -> int:
    """Train an engagement predictor on the logs and print its held-out metrics."""
    from npcrl.reward.model_metrics import format_metrics_table
    from npcrl.reward.model_record import METRICS_FILE
    from npcrl.train.reward_model_train import train_reward_model

    result = train_reward_model(
        args.logs, args.bundle, args.out, load_config(args), base_model=args.base_model, progress=not args.no_progress
    )
    print(format_metrics_table(result.metrics))
    print(json.dumps({"reward_model": str(result.out), "metrics": str(result.out / METRICS_FILE)}))
    return 0


def cmd_reward_model_score(args: argparse.Namespace) -> int:
    """Score play logs with a saved reward model: its predictions next to the logged rewards."""
    from npcrl.reward.model_metrics import format_metrics_table
    from npcrl.train.reward_model_scoring import check_new_file, score_logs, write_predictions

    if args.predictions:
        check_new_file(args.predictions)  # before the scoring, not after it
    scored = score_logs(args.reward_model, args.bundle, args.logs, spec_path=args.spec)
    print(format_metrics_table({s.logs: s.metrics for s in scored}))
    summary: dict[str, object] = {"metrics": {s.logs: s.metrics for s in scored}}
    if args.predictions:
        summary["predictions"] = str(write_predictions(scored, args.predictions))
    print(json.dumps(summary))
    return 0


def cmd_checkpoint_model(args: argparse.Namespace) -> int:
    """A training checkpoint's model as an HF directory (LoRA merged), ready for ``npcrl export``."""
    from pathlib import Path

    from npcrl.train.checkpoint_model import checkpoint_model

    checkpoint = checkpoint_model(Path(args.run), Path(args.out), args.iteration)
    print(json.dumps({"checkpoint": str(checkpoint), "model": str(args.out)}))
    return 0


def add_base_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", help="HF directory with the bundle's weights (default: the manifest's source)")


def add_train_parser(subparsers: Any) -> None:
    """Register ``train`` and ``reward-model``."""
    train = add_command(
        subparsers,
        "train",
        "offline PPO from play logs to a new bundle (needs npcrl[train]; runs under torchrun too)",
        "npcrl train --logs playlogs --bundle bundles/smol-q8 --out runs/r1 --config train.toml",
    )
    train.add_argument(
        "--logs",
        "--play-logs",
        dest="logs",
        required=True,
        help="play-log directory (under torchrun spell it --play-logs: torchrun's parser claims --logs)",
    )
    train.add_argument(
        "--bundle", required=True, help="the bundle the logs came from (policy and reference start here)"
    )
    train.add_argument("--out", required=True, help="output directory (checkpoints, report, HF checkpoint, bundle)")
    train.add_argument("--config", help="training config TOML ([data], [model], [ppo], [run]; see docs/TRAINING.md)")
    add_base_model_argument(train)
    train.add_argument(
        "--personas",
        help="directory of the game's persona cards, added to the built-in ones: the on-policy mode "
        "checks fresh lines against the card of their conversation's NPC",
    )
    train.add_argument("--seed", type=int, help="overrides the config's seed")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (a config with only ppo.iterations raised extends a finished run)",
    )
    train.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")
    train.set_defaults(func=cmd_train)
    add_checkpoint_model_parser(subparsers)
    add_reward_model_parser(subparsers)


def add_checkpoint_model_parser(subparsers: Any) -> None:
    checkpoint = add_command(
        subparsers,
        "checkpoint-model",
        "the model of one of a training run's checkpoints as an HF directory (LoRA merged; needs npcrl[train])",
        "npcrl checkpoint-model runs/r1 --iteration 25 --out runs/r1-iter25",
        description="The model of one of a training run's kept checkpoints as an HF directory (LoRA merged;"
        " needs npcrl[train]); `npcrl export DIR --out BUNDLE --quant q8` makes it a bundle.",
    )
    checkpoint.add_argument("run", help="the --out directory of an npcrl train run")
    checkpoint.add_argument(
        "--iteration",
        type=positive_int,
        help="which checkpoint (default: the newest; a run keeps its run.keep_checkpoints newest)",
    )
    checkpoint.add_argument("--out", required=True, help="HF directory to write (must not exist)")
    checkpoint.set_defaults(func=cmd_checkpoint_model)


def add_reward_model_parser(subparsers: Any) -> None:
    reward_model = add_command(
        subparsers,
        "reward-model",
        "engagement predictors learned from play logs (needs npcrl[train])",
        "npcrl reward-model train --logs playlogs --bundle bundles/smol-q8 --out reward-models/rm1",
    )
    sub = reward_model.add_subparsers(dest="reward_model_command", required=True)
    add_reward_model_train_parser(sub)
    score = add_command(
        sub,
        "score",
        "score play logs with a saved reward model: predictions next to the logged rewards, per directory",
        "npcrl reward-model score eval-report/logs/bundle eval-report/logs/against --reward-model reward-models/rm1"
        " --bundle bundles/smol-q8",
    )
    score.add_argument("logs", nargs="+", help="play-log directories (e.g. the evaluation logs of two bundles)")
    score.add_argument("--reward-model", required=True, help="directory written by npcrl reward-model train")
    score.add_argument(
        "--bundle",
        required=True,
        action="append",
        help="a bundle whose logged turns to read (it and its recorded ancestors; repeat for more); "
        "each must share the reward model's tokenizer",
    )
    score.add_argument("--spec", help="reward spec TOML (default: the one the reward model was trained with)")
    score.add_argument("--predictions", help="also write one JSON line per turn to this new file")
    score.set_defaults(func=cmd_reward_model_score)


def add_reward_model_train_parser(sub: Any) -> None:
    train = add_command(
        sub,
        "train",
        "train a reward model (backbone + scalar head) on the logged turn rewards; prints held-out metrics",
        "npcrl reward-model train --logs playlogs more-playlogs --bundle bundles/smol-q8 --out reward-models/rm1",
    )
    train.add_argument(
        "--logs", required=True, nargs="+", help="play-log directory, or several to pool (different conversations)"
    )
    train.add_argument("--bundle", required=True, help="the bundle the logs came from (its backbone is used)")
    train.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    train.add_argument(
        "--config", help="training config TOML ([data], [model] LoRA keys, [reward_model]; see docs/TRAINING.md)"
    )
    add_base_model_argument(train)
    train.add_argument("--seed", type=int, help="overrides the config's seed (it also picks the holdout split)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_reward_model_train)
