"""Fine-tuning Patch-NetVLAD on the user's own runs (``vlad-localization train``): data and place
split (:mod:`.data`), positives and hard-negative mining (:mod:`.mining`), the cached backbone trunk
(:mod:`.features`), the training loop (:mod:`.loop`) and the learned whitening it writes
(:mod:`.whitening`)."""
from .data import Run, TrainingDataError, TrainingFrames, bag_run, folder_run, map_run, split_by_place
from .mining import PlaceCriteria, mine_triplets, place_pairs, recall_at_k
from .loop import TrainOptions, train

__all__ = ["PlaceCriteria", "Run", "TrainOptions", "TrainingDataError", "TrainingFrames", "bag_run", "folder_run",
           "map_run", "mine_triplets", "place_pairs", "recall_at_k", "split_by_place", "train"]
