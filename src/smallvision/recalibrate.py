"""`smallvision calibrate RUN [SOURCE]`: the temperature and the unknown scorer fitted for a run that lacks them (a
network imported from Keras, a run from before they existed), or fitted again on other data, from a source with
the run's classes. The same fit training ends with (inference.fit_after_training); nothing in the run is
replaced unless the whole fit succeeded, and each file is replaced atomically (the scorer's before model.json,
which names it)."""

import json
import math
from pathlib import Path

from smallvision.data.sources import open_source
from smallvision.errors import SmallvisionError
from smallvision.files import write_atomically
from smallvision.inference import fit_after_training
from smallvision.run import load_run
from smallvision.unknown import MIN_HELD, check_rate, reference_size

HOLD_OUT = 0.15  # of a source without a validation split, held out to fit on (stratified, the run's seed)


def calibrate_run(path: str | Path, source: str | Path | None = None, rate: float = 0.05, data_dir=None,
                  cache_dir=None, device: str = "auto", progress: bool = False) -> dict:
    """Fit and write; what was fitted (the run's metrics.json `calibration` and `unknown`, and the source)."""
    check_rate(rate)
    run = load_run(path, device)
    source = source or run.default_source()
    shape = run.meta.architecture.input_shape
    seed = run.recipe.run.seed
    data = open_source(source, data_dir, HOLD_OUT, seed, 0.0, shape, cache_dir, progress, for_training=False)
    if data.class_names != run.class_names:
        missing = sorted(set(run.class_names) - set(data.class_names))
        extra = sorted(set(data.class_names) - set(run.class_names))
        differ = "; ".join(part for part in (f"the run's {missing[:10]} not in it" if missing else "",
                                             f"{extra[:10]} not the run's" if extra else "") if part)
        raise SmallvisionError(f"{source}: its classes differ from the run's ({differ or 'in another order'}); "
                               f"calibrate needs a source with the run's classes {run.class_names[:10]}")
    if tuple(data.train.shape[1:]) != tuple(shape):
        raise SmallvisionError(f"{source}: images are {tuple(data.train.shape[1:])}, the run expects {tuple(shape)}")
    validation = data.validation
    if validation is None or len(validation) < MIN_HELD:
        have = 0 if validation is None else len(validation)
        raise SmallvisionError(f"{source}: {have} validation images; calibrate needs at least {MIN_HELD} to fit on: a "
                               f"validation/ split of {MIN_HELD} or more, or {math.ceil(MIN_HELD / HOLD_OUT)} training "
                               f"images, of which {HOLD_OUT:.0%} are held out")
    fitted = fit_after_training(run.model, data.train, validation, run.preprocess, run.precision, run.device,
                                run.test_time_flip, rate, seed, reference_size(run.model, tuple(shape)))
    if fitted.unknown is None:
        raise SmallvisionError(f"{source}: {fitted.why_no_unknown}")
    calibration = fitted.calibration
    meta = run.meta.replace(temperature=calibration.temperature if calibration.kept else None,
                            unknown=fitted.unknown.to_json())
    fitted.unknown.save(run.path)
    meta.write(run.path / "model.json")
    record = {"calibration": {**calibration.to_json(), "source": str(source)}, "unknown": fitted.unknown.to_json()}
    metrics_path = run.path / "metrics.json"
    if metrics_path.is_file():  # the run's record says what was fitted, and on what
        metrics = json.loads(metrics_path.read_text())
        write_atomically(metrics_path, lambda p: p.write_text(json.dumps({**metrics, **record}, indent=2)))
    return {**record, "run": str(run.path), "source": str(source)}


calibrate = calibrate_run  # sv.calibrate(RUN, SOURCE), as the command
