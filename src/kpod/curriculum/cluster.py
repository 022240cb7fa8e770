"""Question clusters for the diversity term: KMeans (K = 5) on averaged word vectors.

Default embedding: the mean of the student's own input-embedding vectors over the question's
tokens (the paper averages GloVe vectors; this needs no download). Options: a GloVe text file,
TF-IDF + SVD, or a sentence-embedding model folder (mean pooling).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from kpod.artifacts import RunPaths, read_rationales, write_json
from kpod.config import KPODConfig

log = logging.getLogger(__name__)


def student_embeddings(texts: list[str], model_name: str) -> np.ndarray:
    from kpod.models import load_student

    model, tokenizer = load_student(model_name, "float32", placed=False)  # reads the embedding table, runs nothing
    table = model.get_input_embeddings().weight.detach().float()
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.unk_token_id or 0]
        out.append(table[torch.tensor(ids)].mean(0).numpy())
    return np.stack(out)


def tfidf_embeddings(texts: list[str], dims: int = 100, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    matrix = TfidfVectorizer(min_df=1, stop_words="english").fit_transform(texts)
    dims = max(1, min(dims, matrix.shape[1] - 1, len(texts) - 1))
    return TruncatedSVD(dims, random_state=seed).fit_transform(matrix)


def glove_embeddings(texts: list[str], path: Path) -> np.ndarray:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: GloVe file not found (set cluster.embedding_path)")
    words = {w for t in texts for w in t.lower().split()}
    vectors = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            word, _, rest = line.partition(" ")
            if word in words:
                vectors[word] = np.array(rest.split(), dtype=np.float32)
    if not vectors:
        raise ValueError(f"{path}: no question word has a vector")
    dim = len(next(iter(vectors.values())))
    return np.stack(
        [np.mean([vectors[w] for w in t.lower().split() if w in vectors] or [np.zeros(dim)], axis=0) for t in texts]
    )


@torch.no_grad()
def sentence_embeddings(texts: list[str], path: Path, batch_size: int = 64) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(out)


def embed_questions(texts: list[str], cfg: KPODConfig) -> np.ndarray:
    kind = cfg.cluster.embedding
    if kind == "student":
        return student_embeddings(texts, cfg.student.model)
    if kind == "tfidf":
        return tfidf_embeddings(texts, seed=cfg.seed)
    if cfg.cluster.embedding_path is None:
        raise ValueError(f"cluster.embedding={kind} needs cluster.embedding_path")
    if kind == "glove":
        return glove_embeddings(texts, cfg.cluster.embedding_path)
    return sentence_embeddings(texts, cfg.cluster.embedding_path)


def kmeans(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    k = min(k, len(vectors))
    if k <= 1:
        return np.zeros(len(vectors), dtype=int)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(vectors)


def cluster_questions(cfg: KPODConfig) -> dict:
    """The cluster stage: K-means over averaged word vectors of the questions (clusters/clusters.json)."""
    paths = RunPaths(cfg.run_dir)
    rows = read_rationales(paths.rationales("train"), include_incorrect=True)
    questions = {}
    for row in rows:
        questions.setdefault(row["id"], row["question"])
    ids = list(questions)
    labels = kmeans(embed_questions([questions[i] for i in ids], cfg), cfg.cluster.k, cfg.seed)
    sizes = Counter(int(c) for c in labels)
    result = {
        "k": cfg.cluster.k,
        "embedding": cfg.cluster.embedding,
        "sizes": [sizes.get(c, 0) for c in range(cfg.cluster.k)],
        "assignments": {q: int(c) for q, c in zip(ids, labels)},
    }
    write_json(paths.clusters, result)
    log.info("clustered %d questions into %d clusters, sizes %s", len(ids), cfg.cluster.k, result["sizes"])
    return {"questions": len(ids), "sizes": result["sizes"]}
