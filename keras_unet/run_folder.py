"""The names of the files and folders in a run folder and an export folder: one place for every name."""

# a training run (python train.py --out RUN)
MODEL_FILE = "model.keras"  # the model kept (best validation Dice, or the last epoch's)
CONFIG_FILE = "config.json"  # every resolved setting
SPLIT_FILE = "split.json"  # which images trained and which validated
METRICS_FILE = "metrics.json"  # the final validation scores; its presence marks a finished stage
HISTORY_FILE = "history.csv"  # one row per epoch
CURVES_FILE = "curves.png"
LOGS_DIR = "logs"  # TensorBoard
BACKUP_DIR = "backup"  # what resuming an interrupted fit needs; removed when the stage finishes
FIT_DONE = "fit_done"  # marker inside BACKUP_DIR: fit() ended normally, only the final scores are missing
SKIPPED_FILE = "skipped.txt"  # `file: problem` lines of the annotation files left out (--skip-bad)
SHAPE_PRIOR_FILE = "shape_prior.json"  # each class's mask shape over the training masks (imaging.shape_prior)
MODEL_CARD = "model_card.md"  # what the model is, how it was trained and scored, and its limits
RUN_LOCK = ".run.lock"  # held (pid, host) while a training writes the folder; a second one refuses

# stages inside a run folder
REFINE_DIR = "refine"  # the refine stage's run folder
TEACHER_DIR = "teacher"  # self-training's teacher run
PSEUDO_DIR = "pseudo"  # the pseudo-labelled images (image + masks/ folder)
PRETRAIN_DIR = "pretrain"  # inpainting pretraining
PRETRAIN_WEIGHTS = "body.weights.npz"  # every pretrained layer but the reconstruction head, keyed by layer name
PRETRAIN_HISTORY = "pretrain_history.csv"

# an export folder (python export.py --out EXPORT)
METADATA_FILE = "metadata.json"  # the run's settings and how to feed each artefact

# a predict.py output folder (python predict.py --input FOLDER --out OUT, with or without --rank)
SUMMARY_FILE = "summary.csv"  # each image: done, skipped or failed, with the reason (and its score for --rank)
PROGRESS_FILE = ".progress.jsonl"  # the settings, then one line per finished image: what a restart continues from
OUT_LOCK = ".out.lock"  # held while a predict.py writes the folder
FLAGS_FILE = "flags.csv"  # per image and class: uncertainty, shape deviation, and whether to check the mask
