from kpod.data.datasets import (
    DATASET_TASK,
    DATASETS,
    DatasetSplits,
    Question,
    canonical_dataset,
    load_dataset_splits,
)

__all__ = [
    "DATASETS",
    "DATASET_TASK",
    "DatasetSplits",
    "Question",
    "load_dataset_splits",
    "canonical_dataset",
]
