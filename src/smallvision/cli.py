"""The `smallvision` command: a thin client of the Python API. Every command's --help has an example."""

import argparse
import json
import sys

from smallvision.errors import SmallvisionError

PROG = "smallvision"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except SmallvisionError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader (`| head`) stopped listening; not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written for the unfinished run", file=sys.stderr)
        return 130


def command(subparsers, name: str, help_text: str, example: str, handler) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text,
                                   epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train convolutional image classifiers on small image data sets.",
        epilog="example:\n  smallvision train mnist --recipe seed-mnist\n\n"
               "`smallvision COMMAND --help` shows each command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    train = command(sub, "train", "train a model on a source and write a run directory",
                    "smallvision train mnist --recipe seed-mnist --seed 1 --out runs/mnist-1", run_train)
    train.add_argument("source", help="`mnist`, or a directory of MNIST-format IDX files")
    train.add_argument("--recipe", default="seed-mnist", help="a built-in recipe (see `smallvision recipes`) or a .toml file")
    train.add_argument("--out", help="the run directory to write (default: a new one under runs/)")
    train.add_argument("--force", action="store_true", help="write into --out even if it already holds files")
    train.add_argument("--data", help="where to look for the source's files first")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    overrides = train.add_argument_group("recipe overrides")
    overrides.add_argument("--epochs", type=int)
    overrides.add_argument("--batch-size", type=int)
    overrides.add_argument("--lr", type=float, dest="learning_rate", help="learning rate")
    overrides.add_argument("--optimizer", help="rmsprop, adam, adamw or sgd")
    overrides.add_argument("--schedule", help="constant, onecycle or cosine")
    overrides.add_argument("--steps-per-epoch", type=int)
    overrides.add_argument("--val-split", type=float, help="hold out this fraction of train, stratified and seeded")
    overrides.add_argument("--precision", help="bf16 or fp32")
    overrides.add_argument("--model", help="a network by name (see `smallvision summary --list`)")
    overrides.add_argument("--seed", type=int)
    overrides.add_argument("--device", help="auto, cpu or cuda")

    evaluate = command(sub, "evaluate", "score a run on a labelled source and print its accuracy",
                       "smallvision evaluate runs/mnist-1 mnist", run_evaluate)
    evaluate.add_argument("run", help="a run directory")
    evaluate.add_argument("source", nargs="?", help="the source to score on (default: the one it was trained on)")
    evaluate.add_argument("--split", default="test", help="which split (default: test)")
    evaluate.add_argument("--data", help="where to look for the source's files first")
    evaluate.add_argument("--device", default="auto")

    predict = command(sub, "predict", "classify image files; one JSON object per image",
                      "smallvision predict runs/mnist-1 my_digit.png more_digits/", run_predict)
    predict.add_argument("run", help="a run directory")
    predict.add_argument("files", nargs="+", help="image files (PNG, JPEG, ...) or directories of them")
    predict.add_argument("--top", type=int, default=5, help="how many labels to list in `top`")
    predict.add_argument("--device", default="auto")

    summary = command(sub, "summary", "print a network's layers, output shapes and parameters, as Keras does",
                      "smallvision summary mnist_convnet", run_summary)
    summary.add_argument("name", nargs="?", help="a model name, a recipe name, or a run directory")
    summary.add_argument("--list", action="store_true", help="list the model names")

    recipes = command(sub, "recipes", "list the built-in recipes, one line each",
                      "smallvision recipes --show fast-mnist", run_recipes)
    recipes.add_argument("--show", metavar="NAME", help="print one recipe as TOML")
    return parser


def run_train(args) -> None:
    from dataclasses import fields

    from smallvision.recipe import Recipe
    from smallvision.workflow import train

    names = [f.name for f in fields(Recipe)]
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    run = train(args.source, args.recipe, out=args.out, data=args.data, force=args.force,
                progress=not args.quiet, **overrides)
    metrics = run.metrics
    shown = {k: metrics[k] for k in ("test_accuracy", "val_accuracy", "train_seconds", "images_per_second") if k in metrics}
    print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) and v < 1 else f"{k} {v:g}" for k, v in shown.items()))
    print(run.path)


def run_evaluate(args) -> None:
    from smallvision.run import load_run

    run = load_run(args.run, args.device)
    result = run.evaluate(args.source or run.meta["source"], args.split, args.data)
    print(f"{result['source']} {result['split']}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
          f"({result['images']:,} images)")


def run_predict(args) -> None:
    from smallvision.run import load_run

    run = load_run(args.run, args.device)
    for result in run.predict(args.files, top=args.top):
        print(json.dumps(result))


def run_summary(args) -> None:
    from pathlib import Path

    from smallvision.models import create_model, model_names, summary
    from smallvision.recipe import builtin_recipes
    from smallvision.run import load_run

    if args.list or not args.name:
        print("\n".join(model_names()))
        return
    if Path(args.name).is_dir():
        run = load_run(args.name)
        print(summary(run.model))
        print(f"Recipe: {run.recipe.name}: {run.recipe.one_line()}")
        return
    recipes = builtin_recipes()
    if args.name in recipes:
        recipe = recipes[args.name]
        print(summary(create_model(recipe.model)))
        print(f"Recipe: {recipe.name}: {recipe.one_line()}")
        print(recipe.to_toml().rstrip())
        return
    print(summary(create_model(args.name)))


def run_recipes(args) -> None:
    from smallvision.recipe import builtin_recipes, load_recipe

    if args.show:
        print(load_recipe(args.show).to_toml().rstrip())
        return
    recipes = builtin_recipes()
    width = max(map(len, recipes))
    for name, recipe in recipes.items():
        print(f"{name:<{width}}  {recipe.one_line()}  -- {recipe.description}")


if __name__ == "__main__":
    sys.exit(main())
