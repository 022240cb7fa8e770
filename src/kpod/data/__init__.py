from kpod.data.datasets import (
    DATASET_TASK,
    DATASETS,
    DataError,
    DatasetSplits,
    Question,
    canonical_dataset,
    load_dataset_splits,
    read_json,
    read_jsonl,
)

__all__ = [
    "DATASETS",
    "DATASET_TASK",
    "DataError",
    "DatasetSplits",
    "Question",
    "load_dataset_splits",
    "read_json",
    "read_jsonl",
    "canonical_dataset",
]
