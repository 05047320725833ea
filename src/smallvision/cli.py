"""The `smallvision` command: a thin client of the Python API. Every command's --help has an example."""

import argparse
import json
import sys
from pathlib import Path

from smallvision import heap
from smallvision.errors import SmallvisionError, TrainingStopped, unknown_name

PROG = "smallvision"


def say(line: str) -> None:
    """One line on stderr in one write, its newline included. print() writes the text and the newline
    separately, and the processes of one run share the launcher's pipe: two processes saying the same error
    at once came out joined on one line, which the launcher then could not fold into one."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command's own process (a caller's process is theirs): freed batches kept for the next
        heap.keep_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --processes N` starts N of this command
    if not getattr(args, "handler", None):  # a command group named without its command
        getattr(args, "group", parser).print_help()
        return 2
    try:
        return args.handler(args) or 0
    except SmallvisionError as err:
        say(f"{PROG}: error: {err}")
        return 2
    except TrainingStopped as stop:
        from smallvision import distributed  # loaded already: training stopped

        ranks = distributed.ranks()
        if not ranks.main:
            return 130  # another process of a run trained by several: rank 0 says where it stopped
        state, stage = stop.loop.state, stop.loop.stage and stop.loop.stage.number
        where = f"step {state.step} (epoch {state.epoch + 1}{f' of stage {stage}' if stage else ''})"
        again = f" --processes {ranks.world}" if ranks.world > 1 else ""
        print(f"{PROG}: stopped by {stop.loop.stop_requested} after {where}; the checkpoint is in {stop.directory}; "
              f"continue with:\n  smallvision train --resume {stop.directory}{again}", file=sys.stderr)
        return 143 if stop.loop.stop_requested == "SIGTERM" else 130
    except BrokenPipeError:  # the reader (`| head`) stopped listening; not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        say(f"{PROG}: interrupted; nothing was written for the unfinished run")
        return 130
    finally:
        if "smallvision.distributed" in sys.modules:  # leave the process group before exiting, as torch asks
            sys.modules["smallvision.distributed"].stop()


def at_least(minimum: int):
    """An argparse type: an integer no smaller than `minimum`."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = "integer"  # argparse names the type in its message when int() fails
    return parse


LAYER_WORDS = ("Input Rescaling Conv2D SeparableConv2D DepthwiseConv2D MaxPooling2D AveragePooling2D "
               "GlobalAveragePooling2D GlobalMaxPooling2D Flatten Dense Dropout SpatialDropout2D BatchNormalization "
               "Activation ReLU LeakyReLU Softmax ZeroPadding2D Residual")
# Written out rather than read from models/layers.py, which would import PyTorch for every --help; a test
# holds both lists to the vocabulary.
ACTIVATION_WORDS = "relu sigmoid softmax tanh elu selu gelu swish silu leaky_relu linear"


def layers_text(value: str) -> str:
    """--layers: the layers themselves, or the path of a file that holds them."""
    path = Path(value)
    if "(" not in value and path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise argparse.ArgumentTypeError(f"{path}: cannot be read ({err})") from None
    if "(" not in value and ("/" in value or value.endswith((".txt", ".py"))):
        raise argparse.ArgumentTypeError(f"{path}: no such file")
    return value


def image_shape_text(value: str) -> tuple[int, int, int]:
    """--input-shape H,W,C as Keras writes it -> (channels, height, width)."""
    try:
        height, width, channels = (int(part) for part in value.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be HEIGHT,WIDTH,CHANNELS such as 150,150,3, got {value!r}") from None
    if min(height, width, channels) < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value!r}")
    return channels, height, width


def described(subparsers, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    """A command's parser: its help line, and an example at the end of its --help."""
    return subparsers.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def command(subparsers, name: str, help_text: str, example: str, handler) -> argparse.ArgumentParser:
    parser = described(subparsers, name, help_text, example)
    parser.set_defaults(handler=handler)
    return parser


def command_group(subparsers, name: str, help_text: str, example: str):
    """A command with commands of its own (`data check`); named alone, it shows its own help."""
    parser = described(subparsers, name, help_text, example)
    parser.set_defaults(group=parser)
    return parser.add_subparsers(title="commands", metavar="COMMAND")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train convolutional image classifiers on small image data sets.",
        epilog="example:\n  smallvision train mnist --recipe seed-mnist\n\n"
               "`smallvision COMMAND --help` shows each command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    train = command(sub, "train", "train a model on a source and write a run directory",
                    "smallvision train mnist --recipe seed-mnist --seed 1 --out runs/mnist-1\n"
                    "  smallvision train --resume runs/mnist-1        # after a Ctrl-C, a kill or a crash\n"
                    "  smallvision train mnist --processes 2          # two processes, one run (--gpus 4: four GPUs)\n"
                    "  smallvision train photos/ --gpus 4 --nodes 2 --node-rank 0 --rendezvous 10.0.0.1:29500  # and on the other: 1\n"
                    "  smallvision train my_photos/ --budget 10m        # the best pretrained recipe that fits 10 minutes here\n"
                    "  smallvision train my_photos/ --recipe catsdogs-finetune --val-split 0.15 --test-split 0.15",
                    run_train)
    train.add_argument("--resume", metavar="RUN", help="continue an unfinished run (stopped, killed or crashed) from "
                                                       "its checkpoint, with its own source and recipe")
    train.add_argument("--memory-budget", metavar="SIZE", help="the most the training images may take in memory, e.g. "
                       "1GB (default: half of what is free); a bigger folder trains from the memory-mapped decode cache")
    train.add_argument("--processes", type=at_least(1), metavar="N",
                       help="train as N processes on this machine's CPU cores (torch.distributed, gloo), each taking "
                            "its share of every batch: the same run as one process trains")
    train.add_argument("--gpus", type=at_least(1), metavar="N",
                       help="train on N GPUs of this machine, one process each (torch.distributed, NCCL). Across "
                            "machines, see --nodes")
    train.add_argument("--nodes", type=at_least(1), metavar="M", default=1,
                       help="train across M machines: run the same command on each, with its own --node-rank and "
                            "the same --rendezvous (torchrun's static rendezvous; default 1)")
    train.add_argument("--node-rank", type=at_least(0), metavar="R", default=0,
                       help="this machine's place among --nodes, 0 to M-1; node 0 listens at --rendezvous")
    train.add_argument("--rendezvous", metavar="HOST:PORT", help="where node 0 listens, e.g. 10.0.0.1:29500")
    train.add_argument("--rendezvous-timeout", type=at_least(1), metavar="SECONDS", default=120,
                       help="how long to wait for every machine to join before giving up (default 120)")
    train.add_argument("source", nargs="?", help="`mnist`, an image folder (ROOT/CLASS/*.jpg or ROOT/train/CLASS/*.jpg, "
                                      "with validation/ and test/ beside train/), or a directory of MNIST-format IDX files")
    train.add_argument("--recipe", help="a built-in recipe (see `smallvision recipes`) or a .toml file (default: "
                                        "seed-mnist for MNIST-format digits; for a folder of photos, the pretrained "
                                        "recipe that fits --budget here)")
    train.add_argument("--budget", metavar="TIME",
                       help="for a folder of photos and no --recipe: the most time training may take here, e.g. 5m, "
                            "90s or 1h (default 3m). The best of catsdogs-finetune, catsdogs-features-augment and "
                            "catsdogs-features that fits, from a few seconds' measurement (then cached); none: "
                            "always catsdogs-finetune")
    train.add_argument("--out", help="the run directory to write (default: a new one under runs/)")
    train.add_argument("--force", action="store_true", help="write into --out even if it already holds files")
    train.add_argument("--data", help="where to look for the source's files first")
    shown = train.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="no progress output")
    shown.add_argument("--verbose", action="store_true",
                       help="a progress bar even into a pipe or a file (by default a terminal gets the bar, and a "
                            "pipe or a file one line per epoch, as Keras' verbose=2)")
    add_cache_dir(train)
    overrides = train.add_argument_group("recipe overrides")
    overrides.add_argument("--epochs", type=int)
    overrides.add_argument("--batch-size", type=int)
    overrides.add_argument("--lr", type=float, dest="learning_rate", help="learning rate")
    overrides.add_argument("--optimizer", help="rmsprop, adam, adamw or sgd")
    overrides.add_argument("--schedule", help="constant, onecycle or cosine")
    overrides.add_argument("--steps-per-epoch", type=int)
    overrides.add_argument("--val-split", type=float, help="hold out this fraction of train for validation, "
                                                           "stratified and seeded, when the source has no validation "
                                                           "split (a photo folder with a built-in recipe: 0.15)")
    overrides.add_argument("--test-split", type=float, help="hold out this fraction as a test split when the source has "
                                                            "none (a photo folder with a built-in recipe: 0.15)")
    overrides.add_argument("--image-size", type=int, help="decode image folders to this many pixels square (digits "
                                                          "from IDX files keep their own size: refused there)")
    overrides.add_argument("--dropout", type=float, help="the network's Dropout rate, where it has one")
    overrides.add_argument("--class-weight", metavar="auto|balanced|none",
                           help="weigh each training image's loss by its class, as Keras' class_weight: auto (the "
                                "default) balances the classes when the largest has twice the images of the "
                                "smallest; a table of your own: --set class_weight={cats=1,dogs=4}")
    overrides.add_argument("--unknown-rate", type=float, metavar="RATE",
                           help="the share of validation images the run's \"none of these\" line calls unknown "
                                "(default 0.05): higher rejects more photos of no class, and more of the classes' own")
    overrides.add_argument("--precision", help="auto (the built-in recipes: bf16 where this machine computes it "
                                                            "natively, else fp32), bf16 or fp32")
    overrides.add_argument("--compile", metavar="MODE", help="torch.compile the training step: off (default), "
                                                             "default, reduce-overhead (CUDA graphs on a GPU) or "
                                                             "max-autotune; its seconds go to compile_seconds")
    overrides.add_argument("--model", help="a network by name (see `smallvision summary --list`)")
    overrides.add_argument("--layers", type=layers_text, metavar="LAYERS|FILE",
                           help="the network written as layers in Keras' words, or a file of them, e.g. "
                                "--layers \"Conv2D(32, 3, activation='relu') MaxPooling2D(2) Flatten() "
                                "Dense(10, activation='softmax')\" (see `smallvision summary --help`)")
    overrides.add_argument("--backbone", help="a pretrained timm network to build on (offline: efficientnet_lite0, "
                           "efficientnet_lite1 or efficientnet_lite2)")
    overrides.add_argument("--seed", type=int)
    overrides.add_argument("--device", help="auto, cpu or cuda")
    overrides.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                           help="any recipe field, by its place or its flat name, VALUE as in TOML (repeatable), e.g. "
                                "--set augment.rotation_range=40 --set zoom_range=[0.8,1.2] "
                                "--set augment.horizontal_flip=true")

    evaluate = command(sub, "evaluate", "score a run on a labelled split: accuracy, per-class precision, recall "
                       "and F1, log loss, ROC AUC (two classes), top-5 (over five), the confusion matrix and the most "
                       "confident mistakes, written to RUN/eval-SOURCE-SPLIT/",
                       "smallvision evaluate runs/mnist-1 mnist\n"
                       "  smallvision evaluate runs/pets-1 --split validation\n"
                       "  smallvision evaluate runs/pets-1 new_photos/    # CLASS/* folders of new photos: all of them",
                       run_evaluate)
    add_run_and_source(evaluate)

    calibrate = command(sub, "calibrate", "fit a run's temperature (probabilities that mean what they say) and its "
                        "unknown scorer (\"none of these\") on a labelled source with the run's classes: for a "
                        "network imported from Keras or a run from before they existed; training fits both itself",
                        "smallvision calibrate runs/imported-1 ../shared/datasets/cats_and_dogs_small\n"
                        "  smallvision calibrate runs/pets-1 --unknown-rate 0.1    # the run's own source, a wider line",
                        run_calibrate)
    calibrate.add_argument("run", help="a run directory")
    calibrate.add_argument("source", nargs="?", help="a labelled source with the run's classes (default: the one it "
                                                     "was trained on; for a run from import-keras, its --source); "
                                                     "fitted on its validation split, or on 15%% of its train split "
                                                     "held out where it has none")
    calibrate.add_argument("--unknown-rate", type=float, default=0.05, metavar="RATE",
                           help="the share of validation images to call unknown (default 0.05)")
    calibrate.add_argument("--data", help="where to look for the source's files first")
    calibrate.add_argument("--device", default="auto")
    add_cache_dir(calibrate)

    explain = command(sub, "explain", "Grad-CAM: a heatmap over each image of where the evidence for the "
                      "predicted (or given) class lies, saved as a picture with the prediction in its title",
                      "smallvision explain runs/pets-1 my_cat.jpg --class cats\n"
                      "  smallvision explain runs/mnist-1 digit.png --layer conv2d_1", run_explain)
    explain.add_argument("run", help="a run directory")
    explain.add_argument("files", nargs="+", help="image files or directories of them (a file that cannot be read "
                                                  "gets a JSON line with its `error`, the others are still explained, "
                                                  "and the exit status is 2)")
    explain.add_argument("--class", dest="class_name", help="explain this class (default: each image's prediction)")
    explain.add_argument("--layer", help="the layer whose maps to weigh (default: the last convolutional one; "
                                         "a wrong name lists them)")
    explain.add_argument("-o", "--out", help="the folder for the pictures, made if it is not there (default: "
                                             "RUN/explain/); a picture of the same image from an earlier call is "
                                             "replaced")
    explain.add_argument("--device", default="auto")

    activations = command(sub, "activations", "every channel's activation for one image, a grid per layer, "
                          "as in the chapter", "smallvision activations runs/pets-1 my_cat.jpg --layers conv2d conv2d_1",
                          run_activations)
    activations.add_argument("run", help="a run directory")
    activations.add_argument("image", help="one image file")
    activations.add_argument("--layers", nargs="+", help="which layers (default: every layer with a feature map)")
    activations.add_argument("--max-channels", type=int, default=256, help="draw at most this many channels a layer")
    activations.add_argument("-o", "--out", help="the folder for the pictures, made if it is not there (default: "
                                                 "RUN/activations/); pictures of the same image and layers from an "
                                                 "earlier call are replaced")
    activations.add_argument("--device", default="auto")

    filters = command(sub, "filters", "the input pattern each filter of a layer responds to most, found by "
                      "gradient ascent from noise, drawn as a grid",
                      "smallvision filters runs/pets-1 --layer conv2d_2", run_filters)
    filters.add_argument("run", help="a run directory")
    filters.add_argument("--layer", required=True, help="a layer with a feature map (a wrong name lists them)")
    filters.add_argument("--count", type=int, default=64, help="the first this many filters (default: 64)")
    filters.add_argument("--steps", type=int, default=40, help="gradient ascent steps (default: 40, as the chapter)")
    filters.add_argument("-o", "--out", help="the picture to write (default: RUN/filters/LAYER.png, replaced by each "
                                             "call); a file named here that exists is refused without --force")
    filters.add_argument("--force", action="store_true", help="replace the file -o names")
    filters.add_argument("--device", default="auto")

    report = command(sub, "report", "one self-contained HTML page about a run: recipe, data, curves, "
                     "evaluation, mistakes, Grad-CAM and timings", "smallvision report runs/pets-1", run_report)
    add_run_and_source(report)
    report.add_argument("-o", "--out", help="the HTML file to write (default: RUN/report.html, replaced by each "
                                            "call); a file named here that exists is refused without --force")
    report.add_argument("--force", action="store_true", help="replace the file -o names")
    report.add_argument("--samples", type=at_least(0), default=8, help="how many images get a Grad-CAM heatmap")
    report.add_argument("--layer", help="the layer for Grad-CAM (default: the last convolutional one; a wrong name "
                                        "lists them, and nothing is written)")

    keras_in = command(sub, "import-keras", "turn a Keras model file (.h5 as the book saves it, or .keras) into a run "
                       "directory that predict, evaluate, explain, report and the rest use; TensorFlow is not needed "
                       "and nothing in the file is run",
                       "smallvision import-keras cats_and_dogs_small_2.h5 --source ../shared/datasets/cats_and_dogs_small "
                       "--out runs/book-2\n  smallvision evaluate runs/book-2 ../shared/datasets/cats_and_dogs_small",
                       run_import_keras)
    keras_in.add_argument("file", help="a Keras model file: .h5 (legacy HDF5) or .keras")
    keras_in.add_argument("--out", help="the run directory to write (default: runs/keras-NAME-TIME)")
    names = keras_in.add_mutually_exclusive_group()
    names.add_argument("--classes", help="the class names in the network's order, comma-separated (default: numbers)")
    names.add_argument("--source", help="a labelled source whose classes are the network's (an image folder: "
                                        "its class folders, sorted, as Keras' flow_from_directory orders them)")
    keras_in.add_argument("--rescale", type=float, help="what the pixels were multiplied by before the network "
                                                        "(default 1/255, the book's; 1 when the network has Rescaling)")
    keras_in.add_argument("--force", action="store_true", help="write into an existing directory")

    export = command(sub, "export", "write a run's network in another format: a Keras 3 .keras archive that "
                     "keras.models.load_model reads, its preprocessing inside (feed it 0-255 pixels); or one .onnx "
                     "file that onnxruntime runs without PyTorch (uint8 images [N, H, W, C] in, the run's "
                     "probabilities out), checked against the run on 64 of its test images",
                     "smallvision export runs/mnist-1 --format keras -o mnist.keras\n"
                     "  smallvision export runs/pets-1 --format onnx -o pets.onnx\n"
                     "  smallvision predict pets.onnx my_cat.jpg          # onnxruntime alone", run_export)
    export.add_argument("run", help="a run directory")
    export.add_argument("--format", choices=["keras", "onnx"], default="keras", help="the file's format (default keras)")
    export.add_argument("-o", "--out", help="the file to write (default RUN/model.keras, RUN/model.onnx); one that "
                                            "exists is refused without --force")
    export.add_argument("--force", action="store_true", help="replace the file if it exists")
    export.add_argument("--data", help="onnx: where to look for the run's source first, for its test images (without "
                                       "them the check uses random images)")

    compare = command(sub, "compare", "runs side by side: recipe, model, parameters, epochs, training time (a frozen "
                      "backbone's feature extraction included; compiling and loading the data not) and test accuracy; "
                      "with --plot, their validation accuracy in one picture",
                      "smallvision compare runs/*/ --md\n  smallvision compare runs/lite0 runs/lite1 --plot lite.png",
                      run_compare)
    compare.add_argument("runs", nargs="+", help="run directories")
    compare.add_argument("--md", action="store_true", help="print a Markdown table")
    compare.add_argument("--plot", metavar="FILE.png", help="also draw each run's validation accuracy by epoch and by "
                         "training time (a frozen backbone's feature extraction included, as in the table); a file "
                         "that exists is refused without --force, and runs without a validated epoch draw nothing")
    compare.add_argument("--force", action="store_true", help="replace the file --plot names")

    predict = command(sub, "predict", "classify image files; one JSON object per image, in file order (a file that "
                      "cannot be read gets one with its `error`, the others are still answered, and the exit status is 2)",
                      "smallvision predict runs/mnist-1 my_digit.png more_digits/\n"
                      "  smallvision predict pets.onnx my_cat.jpg        # a file from `export --format onnx`: "
                      "onnxruntime, no PyTorch", run_predict)
    predict.add_argument("run", metavar="RUN|MODEL.onnx", help="a run directory, or an .onnx file that `smallvision "
                         "export RUN --format onnx` wrote (run by onnxruntime alone; PyTorch is not loaded)")
    predict.add_argument("files", nargs="+", help="image files (PNG, JPEG, ...) or directories of them")
    predict.add_argument("--top", type=at_least(1), default=5, help="how many labels to list in `top`")
    predict.add_argument("--device", default="auto")

    serve = command(sub, "serve", "serve runs over HTTP: a page to classify images (drop, paste or choose them) with "
                    "Grad-CAM and each model's card, and a JSON API documented at /docs; Ctrl-C stops. An exported "
                    ".onnx file is served by onnxruntime, without PyTorch (no Grad-CAM)",
                    "smallvision serve runs/pets-1 runs/mnist-1 --port 8000\n"
                    "  curl -F files=@my_cat.jpg -F files=@my_dog.jpg 'http://127.0.0.1:8000/predict?model=pets-1'\n"
                    "  curl --data-binary @my_cat.jpg http://127.0.0.1:8000/gradcam -o cam.png\n"
                    "  smallvision serve runs/pets-1 --host 0.0.0.0 --token \"$(openssl rand -hex 16)\"\n"
                    "  smallvision export runs/pets-1 --format onnx -o pets.onnx && smallvision serve pets.onnx", run_serve)
    serve.add_argument("runs", nargs="+", metavar="RUN", help="run directories, served by their directory's name, or "
                       "exported .onnx files, by their name without .onnx (RUN/model.onnx by its run's)")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this "
                       "machine only; 0.0.0.0 reaches other machines, with a warning)")
    serve.add_argument("--port", type=at_least(0), default=8000, help="the port (default 8000; 0: any free one)")
    serve.add_argument("--token", help="require `Authorization: Bearer TOKEN` on every request but the page, the "
                       "docs and /healthz (default: $SMALLVISION_TOKEN, if set)")
    serve.add_argument("--max-batch", type=at_least(1), help="the most images in one forward pass (default 32 for a "
                       "run directory; 1 for an .onnx file: onnxruntime gains little or nothing from batches, and "
                       "keeps the memory of the largest)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for requests already "
                       "arriving (default 5 ms)")
    serve.add_argument("--max-queue", type=at_least(1), default=256, help="images waiting per model before "
                       "requests are refused with 503 and Retry-After")
    serve.add_argument("--access-log", action="store_true", help="print a line per request")
    serve.add_argument("--device", default="auto")

    studio = command(sub, "studio", "one local page: look at folders of photos or IDX digits (counts, thumbnails a "
                     "page at a time), relabel or remove a photo through the folder's journal (Undo), check and audit "
                     "a folder, add dropped photos, train on one with live curves, estimates and an augmentation "
                     "preview (Stop writes a checkpoint, Resume continues it), review a finished run (confusion "
                     "cells, mistakes by loss, Grad-CAM), try it (photos or the camera), and follow every "
                     "run in the runs folder, a run trained in a terminal too. It reads and writes only under the "
                     "folders it is given and --runs; each training runs in a process of its own, one at a time",
                     "smallvision studio ../shared/datasets --runs runs\n"
                     "  smallvision studio my_photos/ --port 0 --open\n"
                     "  smallvision studio my_photos/ --host 0.0.0.0 --token \"$(openssl rand -hex 16)\"", run_studio)
    studio.add_argument("roots", nargs="*", metavar="FOLDER", help="folders of photos (ROOT/CLASS/*.jpg or "
                        "ROOT/train/CLASS/*.jpg) or of IDX files, or folders holding them (default: the current folder)")
    studio.add_argument("--runs", default="runs", help="the runs folder: where trainings write, and which runs the "
                        "page shows (default runs/)")
    studio.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this "
                        "machine only; any other needs --token)")
    studio.add_argument("--port", type=at_least(0), default=8800, help="the port (default 8800; 0: any free one)")
    studio.add_argument("--token", help="require `Authorization: Bearer TOKEN` on the API (default: "
                        "$SMALLVISION_TOKEN, if set); needed for any --host but loopback")
    studio.add_argument("--open", action="store_true", help="open the page in the browser")

    summary = command(sub, "summary", "print a network's layers, output shapes and parameters, as Keras does",
                      "smallvision summary mnist_convnet\n"
                      "  smallvision summary --layers \"Input(shape=(28, 28, 1)) Conv2D(32, 3, activation='relu') "
                      "MaxPooling2D(2) Flatten() Dense(10, activation='softmax')\"\n\n"
                      "layers, as `--layers` and a recipe's `layers` take them (Keras' names, arguments and defaults):\n"
                      f"  {LAYER_WORDS}\n"
                      f"activations: {ACTIVATION_WORDS}\n"
                      "Residual([...]) adds its layers' output to its input (our one word beyond Keras').",
                      run_summary)
    summary.add_argument("name", nargs="?", help="a model name, a recipe name, a run directory, or a file of layers")
    summary.add_argument("--layers", type=layers_text, metavar="LAYERS|FILE", help="a network written as layers")
    summary.add_argument("--input-shape", metavar="H,W,C", type=image_shape_text,
                         help="the input's height, width and channels when the layers have no Input (default 28,28,1)")
    summary.add_argument("--classes", type=at_least(1), help="the number of classes, to check the network's end")
    summary.add_argument("--list", action="store_true", help="list the model names")

    recipes = command(sub, "recipes", "list the built-in recipes, one line each",
                      "smallvision recipes --show fast-mnist", run_recipes)
    recipes.add_argument("--show", metavar="NAME", help="print one recipe as TOML")

    data_sub = command_group(sub, "data", "look at a data source before training on it",
                             "smallvision data check my_photos/")
    check = command(data_sub, "check", "counts per split and class, image sizes and modes, skipped files, "
                    "duplicates and imbalance; exits 1 when training on the source would fail",
                    "smallvision data check ../shared/datasets/cats_and_dogs_small --samples classes.png", run_data_check)
    check.add_argument("source", help="an image folder, `mnist`, or a directory of IDX files")
    check.add_argument("--recipe", default="seed-catsdogs", help="decode at this recipe's image size and channels "
                                                                  "(shares the decode cache with training runs)")
    check.add_argument("--image-size", type=int, help="decode at this size instead")
    check.add_argument("--samples", metavar="PNG", help="also draw 8 training images of each class, a row per class "
                                                        "(a file that exists is refused without --force)")
    check.add_argument("--force", action="store_true", help="replace the file --samples names")
    check.add_argument("--memory-budget", metavar="SIZE", help="say whether training would hold the images in memory "
                       "or read them from the memory-mapped cache under this budget (default: the recipe's)")
    check.add_argument("--data", help="where to look for the source's files first")
    add_cache_dir(check)

    audit = command(data_sub, "audit", "find photos in the wrong class folder, near-duplicates and leaks across "
                    "splits, and outliers, each image scored by models that never saw it; writes label_issues.csv, "
                    "near_duplicates.csv, outliers.csv, contact sheets and audit.html",
                    "smallvision data audit ../shared/datasets/cats_and_dogs_small --out audit/\n"
                    "  smallvision data audit mnist --folds 4", run_data_audit)
    audit.add_argument("source", help="an image folder, `mnist`, or a directory of IDX files")
    audit.add_argument("--out", metavar="DIR", help="where to write the findings (default: beside the decode cache, "
                                                     "printed)")
    audit.add_argument("--recipe", help="what scores the images: for photos a recipe with a pretrained backbone "
                                        "(default catsdogs-features: a linear head on its frozen features, seconds "
                                        "once they are computed), or any recipe trained from scratch k times "
                                        "(digits: fast-mnist)")
    audit.add_argument("--folds", type=at_least(2), default=5, help="cross-validation folds over the train split "
                                                                    "(default 5; fewer when a class has fewer images)")
    audit.add_argument("--seed", type=int, default=0, help="the folds' seed")
    audit.add_argument("--data", help="where to look for the source's files first")
    add_cache_dir(audit)
    apply = command(data_sub, "apply", "carry out the action column of an audit's table (relabel: into the "
                    "suggested class's folder; remove: into SOURCE/.smallvision-removed/), every move written to a "
                    "journal first; files changed since the audit are refused",
                    "smallvision data apply audit/label_issues.csv\n"
                    "  smallvision data apply audit/near_duplicates.csv --accept-all --dry-run", run_data_apply)
    apply.add_argument("table", help="label_issues.csv, near_duplicates.csv or outliers.csv from `data audit` "
                                     "(its audit.json beside it)")
    apply.add_argument("--accept-all", action="store_true",
                       help="rows left empty take the audit's suggestion: relabel in label_issues.csv; in "
                            "near_duplicates.csv every copy but the first of its group is removed (outliers: left)")
    apply.add_argument("--dry-run", action="store_true", help="check every row and say what would move; move nothing")
    undo = command(data_sub, "undo", "put back every file `data apply` moved in a source, byte for byte, from its "
                   "journal (SOURCE/.smallvision-journal.jsonl)",
                   "smallvision data undo ../shared/datasets/cats_and_dogs_small\n"
                   "  smallvision data undo ../shared/datasets/cats_and_dogs_small --last 1", run_data_undo)
    undo.add_argument("source", help="the image folder the moves were made in")
    undo.add_argument("--last", type=at_least(1), metavar="N",
                      help="put back only the newest N moves not yet undone (the studio's Undo); the journal stays")

    augment_sub = command_group(sub, "augment", "see what a recipe's augmentation does",
                                "smallvision augment preview my_photos/ --recipe seed-catsdogs-augment -o grid.png")
    preview = command(augment_sub, "preview", "draw one training image and a grid of its augmented versions",
                      "smallvision augment preview ../shared/datasets/cats_and_dogs_small "
                      "--recipe seed-catsdogs-augment -o grid.png", run_augment_preview)
    preview.add_argument("source", help="an image folder, `mnist`, or a directory of IDX files")
    preview.add_argument("--recipe", help="whose augmentation to draw (default: the recipe `train` uses for the "
                                          "source without --recipe: seed-mnist for digits, which has none, and "
                                          "catsdogs-finetune for a folder of photos)")
    preview.add_argument("-o", "--out", default="augment-preview.png", help="the picture to write (PNG; default "
                         "augment-preview.png); a file that exists is refused without --force")
    preview.add_argument("--force", action="store_true", help="replace the file -o names")
    preview.add_argument("--index", type=int, default=0, help="which training image (default: the first)")
    preview.add_argument("--count", type=int, default=11, help="how many augmented versions")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--data", help="where to look for the source's files first")
    add_cache_dir(preview)
    return parser


def add_run_and_source(parser: argparse.ArgumentParser) -> None:
    """A run, and the labelled split it is scored on."""
    parser.add_argument("run", help="a run directory")
    parser.add_argument("source", nargs="?", help="the source to score on (default: the one it was trained on; for "
                                                  "a run from import-keras, its --source)")
    parser.add_argument("--split", help="which split (default: test; all of a folder of class folders that is not "
                                         "the run's own source, e.g. new labelled photos)")
    parser.add_argument("--data", help="where to look for the source's files first")
    parser.add_argument("--device", default="auto")
    add_cache_dir(parser)


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="where decoded images are kept between runs "
                                            "(default: $SMALLVISION_CACHE or ~/.cache/smallvision)")


def new_file(path: str | Path, force: bool, flag: str) -> Path:
    """A file a command is about to write where the user named it, checked before any work is spent: one
    that exists is refused unless --force (nothing already on disk is overwritten)."""
    path = Path(path)
    if path.is_dir():
        raise SmallvisionError(f"{path}: is a directory; name the file to write with {flag}")
    if path.exists() and not force:
        raise SmallvisionError(f"{path}: already exists; choose another {flag}, or pass --force to replace it")
    return path


def print_json(result: dict) -> None:
    """One JSON line, encoded as `serve` encodes its answers: UTF-8, names as they are (no \\u escapes)."""
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    if encoding != "utf8" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")  # a class name in any script must not fail a C locale
    print(json.dumps(result, ensure_ascii=False))


def print_answers(results) -> int:
    """predict's and explain's JSON lines as they come; a file that could not be read has its `error` in its
    line and one line on stderr names it (or counts them): exit status 2, the others answered all the same."""
    unreadable = []
    for result in results:
        print_json(result)
        if "error" in result:
            unreadable.append(result["error"])
    if len(unreadable) == 1:
        print(f"{PROG}: error: {unreadable[0]}", file=sys.stderr)
    elif unreadable:
        print(f"{PROG}: error: {len(unreadable)} files could not be read, their lines say why; the first: "
              f"{unreadable[0]}", file=sys.stderr)
    return 2 if unreadable else 0


def parse_settings(settings: list[str]) -> dict:
    """--set FIELD=VALUE pairs as recipe changes (FIELD dotted, augment.rotation_range, or flat, rotation_range: as
    Recipe.replace takes them); VALUE is read as TOML, else kept as a string."""
    import tomllib

    changes = {}
    for setting in settings:
        field, equals, value = setting.partition("=")
        if not equals or not field.strip():
            raise SmallvisionError(f"--set {setting!r}: expected FIELD=VALUE, e.g. --set augment.rotation_range=40")
        try:
            changes[field.strip()] = tomllib.loads(f"value = {value.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            changes[field.strip()] = value.strip()
    return changes


LAUNCH_FLAGS = ("--processes", "--gpus", "--nodes", "--node-rank", "--rendezvous", "--rendezvous-timeout")


def without_launch_flags(argv: list[str]) -> list[str]:
    """The command line as each started process runs it: the flags that say how to start them taken out."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in LAUNCH_FLAGS:
            skip = True
        elif not token.startswith(tuple(f"{flag}=" for flag in LAUNCH_FLAGS)):
            kept.append(token)
    return kept


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def run_train(args) -> int | None:
    from smallvision import launcher
    from smallvision.recipe import FLAT

    overrides = {k: v for k, v in vars(args).items() if k in FLAT and v is not None}  # --epochs and the like
    overrides.update(parse_settings(args.set))
    if args.source is None and args.resume is None:
        raise SmallvisionError("name a source to train on (e.g. `mnist` or a folder of photos), or --resume RUN")
    if args.gpus and args.processes:
        raise SmallvisionError("give --gpus or --processes, not both")
    if args.gpus:
        count = torch_cuda_count()
        if args.gpus > count:
            raise SmallvisionError(f"--gpus {args.gpus}: this machine has {count} GPU{'' if count == 1 else 's'}"
                                   f"{'; leave --gpus out to train on the CPU' if count == 0 else ''}")
        overrides["device"] = "cuda"
    wanted = args.gpus or args.processes or 1
    if args.node_rank >= args.nodes:
        raise SmallvisionError(f"--node-rank {args.node_rank}: with --nodes {args.nodes} it must be 0 to {args.nodes - 1}")
    if args.nodes > 1 and not args.rendezvous:
        raise SmallvisionError(f"--nodes {args.nodes} needs --rendezvous HOST:PORT, where node 0 listens (the same on "
                               f"every machine)")
    if (wanted > 1 or args.nodes > 1) and not launcher.launched():  # start the processes, each without the flags
        argv = without_launch_flags(args.argv) + (["--device", "cuda"] if args.gpus else [])
        machines = launcher.Machines(args.nodes, args.node_rank, args.rendezvous, args.rendezvous_timeout) \
            if args.nodes > 1 else None
        return launcher.launch(wanted, argv, machines)
    from smallvision import distributed
    from smallvision.workflow import train

    run = train(args.source, args.recipe, out=args.out, data=args.data, force=args.force,
                progress="off" if args.quiet else "bar" if args.verbose else "auto", cache_dir=args.cache_dir, resume=args.resume,
                budget=args.budget, **overrides)
    if not distributed.ranks().main:
        return None  # rank 0 reports the run
    metrics = run.metrics
    shown = {k: metrics[k] for k in ("test_accuracy", "test_balanced_accuracy", "val_accuracy", "train_seconds",
                                     "images_per_second") if metrics.get(k) is not None}
    if shown.get("test_balanced_accuracy") == shown.get("test_accuracy"):  # a balanced test split: said once
        shown.pop("test_balanced_accuracy", None)
    formats = {"test_accuracy": ".4f", "test_balanced_accuracy": ".4f", "val_accuracy": ".4f", "train_seconds": ".2f",
               "images_per_second": ",.1f"}
    print("  ".join(f"{k} {v:{formats[k]}}" for k, v in shown.items()))  # one format a figure: 1.0000 beside 0.5000
    print(run.path)


def run_import_keras(args) -> None:
    from smallvision.keras_files import import_keras

    classes = [name.strip() for name in args.classes.split(",")] if args.classes else None
    run = import_keras(args.file, args.out, classes, args.source, args.rescale, args.force)
    channels, height, width = run.meta.architecture.input_shape
    print(f"{args.file}: {run.model.model_name}, {len(run.class_names)} classes, input {height}x{width}x{channels}")
    if run.meta.imported_from.left_out:
        print(f"left out: {'; '.join(run.meta.imported_from.left_out)}: augmentation, which acts only in "
              f"training", file=sys.stderr)
    print(run.path)


def run_export(args) -> int | None:
    from smallvision.run import load_run

    run = load_run(args.run, "cpu")
    out = new_file(args.out or run.path / f"model.{args.format}", args.force, "-o")
    if args.format == "onnx":
        return export_onnx_and_report(run, out, args.data)
    from smallvision.keras_files import export_keras

    if run.test_time_flip:
        print("note: the run scores each image with its mirror image too; the Keras file scores the image alone",
              file=sys.stderr)
    print(export_keras(run, out))


def run_evaluate(args) -> None:
    from smallvision.evaluation import evaluate_run
    from smallvision.run import load_run

    run = load_run(args.run, args.device)
    evaluation = evaluate_run(run, args.source, args.split, args.data, args.cache_dir, progress=True)
    metrics = evaluation.metrics
    scored = f"; scored whole: {metrics['scored']}" if "scored" in metrics else ""
    print(f"{metrics['source']} {metrics['split']}: accuracy {metrics['accuracy']:.4f}  balanced accuracy "
          f"{metrics['balanced_accuracy']:.4f}  loss {metrics['loss']:.4f}  "
          f"({metrics['images']:,} images{scored})\n")
    print(evaluation.report)
    print(f"\n{evaluation.directory}")


def run_calibrate(args) -> None:
    from smallvision.recalibrate import calibrate_run

    done = calibrate_run(args.run, args.source, args.unknown_rate, args.data, args.cache_dir, args.device, progress=True)
    calibration, unknown = done["calibration"], done["unknown"]
    kept = (f"temperature {calibration['temperature']:.3f} kept" if calibration["kept"]
            else f"no temperature (T = {calibration['temperature']:.3f} did not lower the NLL)")
    print(f"{done['run']}: {kept}: NLL {calibration['nll_before']:.4f} -> "
          f"{min(calibration['nll_after'], calibration['nll_before']):.4f}, ECE {calibration['ece_before']:.4f}"
          f" -> {calibration['ece_after'] if calibration['kept'] else calibration['ece_before']:.4f} "
          f"on {calibration['images']:,} images of {done['source']} ({calibration['fitted_on']}); unknown past "
          f"{unknown['threshold']:.4f} ({unknown['rate']:.0%} of the validation images)")


def run_explain(args) -> int:
    from smallvision.explain import explain
    from smallvision.run import load_run

    return print_answers(explain(load_run(args.run, args.device), args.files, args.class_name, args.layer, args.out))


def run_activations(args) -> None:
    from smallvision.activations import activation_pictures
    from smallvision.run import load_run

    for path in activation_pictures(load_run(args.run, args.device), args.image, args.layers, args.out,
                                    args.max_channels):
        print(path)


def run_filters(args) -> None:
    from smallvision.filters import filter_picture
    from smallvision.run import load_run

    if args.out:
        new_file(args.out, args.force, "-o")
    print(filter_picture(load_run(args.run, args.device), args.layer, args.out, args.count, args.steps))


def run_report(args) -> None:
    from smallvision.report import build_report
    from smallvision.run import load_run

    if args.out:
        new_file(args.out, args.force, "-o")
    print(build_report(load_run(args.run, args.device), args.out, args.source, args.split, args.data, args.cache_dir,
                       args.samples, args.layer, progress=True))


def run_compare(args) -> None:
    from smallvision.compare import compare_runs, format_table, plot_runs

    if args.plot:
        new_file(args.plot, args.force, "--plot")
    rows = compare_runs(args.runs)
    unvalidated = plot_runs(args.runs, args.plot) if args.plot else []  # refused (nothing drawn) before the table
    print(format_table(rows, markdown=args.md))
    if args.plot:
        print(f"wrote {args.plot}" + (f" (no validated epoch, left out: {', '.join(unvalidated)})" if unvalidated
                                      else ""), file=sys.stderr)


def export_onnx_and_report(run, out, data_dir=None) -> int:
    from smallvision.onnx_export import PARITY_BAR, export_onnx, parity

    path = export_onnx(run, out)
    channels, height, width = run.meta.architecture.input_shape
    inside = "preprocessing" + (", mirrored-image mean" if run.test_time_flip else "")
    size = path.stat().st_size
    size = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"
    print(f"wrote {path} ({size}, fp32): uint8 images [N, {height}, {width}, {channels}] in, "
          f"{len(run.class_names)} class probabilities out; {inside} inside")
    check = parity(run, path, data_dir)
    print(f"largest probability difference, onnxruntime against the run in PyTorch (fp32): {check.difference:.1e} "
          f"on {check.images} (bar {PARITY_BAR:.0e})")
    if check.unknown_difference is not None:
        print(f"unknown scores: largest relative difference {check.unknown_difference:.1e} (bar {PARITY_BAR:.0e}), "
              f"{check.decisions_differ} unknown decisions differ")
    print(path)
    if not check.within_bar:
        print(f"{PROG}: error: {path}: its probabilities or unknown scores differ from the run's by "
              f"{max(check.difference, check.unknown_difference or 0):.1e}, over {PARITY_BAR:.0e}; do not ship it "
              f"(please report this with the run's model.json)", file=sys.stderr)
        return 1
    return 0


def run_predict(args) -> int:
    from smallvision.onnx_model import OnnxModel, is_onnx_path  # imports no PyTorch

    if is_onnx_path(args.run):  # decided before anything imports PyTorch: onnxruntime answers alone
        run = OnnxModel(args.run, args.device)
    else:
        from smallvision.run import load_run

        run = load_run(args.run, args.device)
    return print_answers(run.predict_each(args.files, top=args.top, progress=True))


def run_serve(args) -> None:
    import os

    from smallvision.serve.server import serve

    if args.max_wait_ms < 0:
        raise SmallvisionError(f"--max-wait-ms must not be negative, got {args.max_wait_ms:g}")
    token = args.token or os.environ.get("SMALLVISION_TOKEN") or None
    serve(args.runs, args.host, args.port, token, args.device, args.max_batch, args.max_wait_ms, args.max_queue,
          args.access_log)


def run_studio(args) -> None:
    import os

    from smallvision.studio.app import studio

    token = args.token or os.environ.get("SMALLVISION_TOKEN") or None
    studio(args.roots or ["."], args.runs, args.host, args.port, token, args.open)


def run_summary(args) -> None:
    from pathlib import Path

    from smallvision.models import build_network, create_model, model_names, summary
    from smallvision.models.layer_text import parse_layers
    from smallvision.models.layers import declared_input_shape
    from smallvision.recipe import builtin_recipes
    from smallvision.run import load_run

    if args.name and not args.layers and Path(args.name).is_file():
        args.layers = layers_text(args.name)
    if args.layers:
        layers = parse_layers(args.layers)
        shape = args.input_shape or (None if declared_input_shape(layers) else (1, 28, 28))
        print(summary(build_network(layers, shape, args.classes)))
        return
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
        from smallvision.models import recipe_image_shape, recipe_model

        recipe = recipes[args.name]
        classes = 2 if recipe.network.backbone else None  # a backbone's head: the seed's cats and dogs
        model = recipe_model(recipe, recipe_image_shape(recipe), classes, pretrained=False)
        if recipe.network.backbone:
            model.freeze_backbone()  # as stage one trains it
        print(summary(model, fine_tune_blocks=recipe.fine_tune.blocks))
        print(f"Recipe: {recipe.name}: {recipe.one_line()}")
        print(recipe.to_toml().rstrip())
        return
    if args.name not in model_names():  # the nearest of everything summary takes: models, recipes, runs
        raise unknown_name("model, recipe or run", args.name, model_names() + list(recipes) + runs_beside(args.name))
    print(summary(create_model(args.name)))


def runs_beside(name: str) -> list[str]:
    """The run directories in the folder `name` would be in (a misspelt run's neighbours), as paths like it."""
    from smallvision.run import is_run

    folder = Path(name).parent
    try:
        return sorted(str(folder / entry.name) if str(folder) != "." else entry.name
                      for entry in folder.iterdir() if entry.is_dir() and is_run(entry))
    except OSError:
        return []


def run_data_check(args) -> int:
    from smallvision.data.folders import FolderProblem
    from smallvision.datacheck import check_source, format_report, plot_class_samples
    from smallvision.recipe import load_recipe
    from smallvision.run import writable_directory
    from smallvision.models import recipe_image_shape

    recipe = load_recipe(args.recipe).replace(image_size=args.image_size, memory_budget=args.memory_budget)
    if args.samples:  # before the decoding, not after it
        writable_directory(new_file(args.samples, args.force, "--samples").parent)
    try:
        report = check_source(args.source, recipe_image_shape(recipe), args.data, args.cache_dir, progress=True,
                              memory_budget=recipe.data.memory_budget)
    except FolderProblem as problem:  # a folder that is there, laid out so that training would fail: the verdict
        print(f"source: {args.source}\n\ncannot train: {problem}")
        return 1
    print(format_report(report))
    if args.samples and report.source.train is not None:
        print(f"samples: {plot_class_samples(report.source, args.samples)}")
    return 0 if report.ok else 1


def run_data_audit(args) -> None:
    from smallvision.audit import audit

    result = audit(args.source, args.out, args.recipe, args.folds, args.data, args.cache_dir, progress=True,
                   seed=args.seed)
    print(result.summary())


def run_data_apply(args) -> None:
    from smallvision.journal import apply_actions

    report = apply_actions(args.table, args.accept_all, args.dry_run)
    print(report.summary())
    if not args.dry_run and (report.relabelled or report.removed):
        print(f"smallvision data undo {report.journal.parent} puts every file back")


def run_data_undo(args) -> None:
    from smallvision.journal import undo

    if args.last is not None:
        from smallvision.journal import undo_last

        for move in undo_last(args.source, args.last):
            print(f"put back {move.source} (from {move.target})")
        return
    print(undo(args.source).summary())


def run_augment_preview(args) -> None:
    from smallvision.preview import preview_augmentation

    new_file(args.out, args.force, "-o")
    path = preview_augmentation(args.source, args.recipe, args.out, index=args.index, count=args.count,
                                seed=args.seed, data_dir=args.data, cache_dir=args.cache_dir)
    print(path)


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
