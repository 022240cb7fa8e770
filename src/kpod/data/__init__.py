from kpod.data.datasets import DATASETS, DATASET_TASK, DataError, DatasetSplits, Question, load_dataset_splits, read_json, read_jsonl, canonical_dataset

__all__ = ["DATASETS", "DATASET_TASK", "DataError", "DatasetSplits", "Question", "load_dataset_splits", "read_json", "read_jsonl", "canonical_dataset"]
