from collections import Counter

import numpy as np
import pytest

from megatron_ultralong.data.packing import (
    DocumentStream,
    cu_seqlens_from_doc_ids,
    pack_documents,
    pack_whole_samples,
    window_to_sample,
)

SEP = 999


def _docs(n=40, seed=0, lo=1, hi=90):
    rng = np.random.default_rng(seed)
    # distinct token ranges per document make each token's origin checkable
    return [list(range(1000 * (i + 1), 1000 * (i + 1) + int(k))) for i, k in enumerate(rng.integers(lo, hi, n))]


@pytest.mark.parametrize("seq_length", [1, 7, 64, 5000])
def test_pack_documents_keeps_every_token_once_in_windows_of_exact_length(seq_length):
    docs = _docs()
    packed = pack_documents(docs, seq_length, SEP, seed=5)
    assert packed.tokens.shape[1] == seq_length + 1 and packed.tokens.shape == packed.doc_ids.shape
    inputs = packed.tokens[:, :-1].ravel()  # every stream token is an input exactly once
    real = inputs[packed.target[:, :-1].ravel() == 1]
    expected = Counter(t for d in docs for t in d) + Counter({SEP: len(docs)})  # one separator per document
    assert Counter(real.tolist()) == expected
    assert packed.num_pad == (packed.target == 0).sum() < seq_length + 1  # padding only ends the last window
    # consecutive windows overlap by one token: the last label of window i is the first input of window i+1
    assert np.array_equal(packed.tokens[:-1, -1], packed.tokens[1:, 0])


def test_separator_closes_each_document_and_boundaries_follow_documents():
    docs = _docs(n=6, lo=3, hi=9)
    packed = pack_documents(docs, 16, SEP)  # no seed: input order
    stream = np.concatenate([np.r_[d, SEP] for d in docs])
    flat = packed.tokens[:, :-1].ravel()[: len(stream)]
    assert np.array_equal(flat, stream)
    assert len(packed.tokens) == len(packed.doc_ids) == len(packed.cu_seqlens) == len(packed.window_docs) > 0
    for row, ids, cu, members in zip(packed.tokens, packed.doc_ids, packed.cu_seqlens, packed.window_docs):
        assert cu[0] == 0 and cu[-1] == 17 and len(cu) - 1 == len(members)
        for (a, b), doc in zip(zip(cu[:-1], cu[1:]), members):
            seg = row[a:b]
            assert (ids[a:b] == ids[a]).all()
            if doc >= 0:  # a (piece of a) document, then possibly its separator
                body = seg[seg != SEP]
                assert set(body.tolist()) <= set(docs[doc]) and (seg[:-1] != SEP).all()


def test_packing_is_deterministic_given_the_seed():
    docs = _docs(seed=1)
    a, b, c = (pack_documents(docs, 50, SEP, seed=s) for s in (3, 3, 4))
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.doc_ids, b.doc_ids)
    assert not np.array_equal(a.tokens, c.tokens)
    assert sorted(a.order.tolist()) == list(range(len(docs)))


def test_document_stream_segments_locate_separators():
    stream = DocumentStream([3, 0, 2])  # blocks: [d0 d0 d0 S] [S] [d2 d2 S]
    assert stream.total == 8
    assert stream.segments(0, 8) == [(0, 0, 4), (1, 0, 1), (2, 0, 3)]
    assert stream.segments(2, 6) == [(0, 2, 4), (1, 0, 1), (2, 0, 1)]


def test_window_to_sample_masking_restarts_positions_and_drops_cross_document_labels():
    tokens = np.array([5, 6, SEP, 7, 8, 9, SEP, 4])
    seg = np.array([0, 0, 0, 1, 1, 1, 1, 2], np.int32)
    target = np.ones(8, np.int8)
    on = window_to_sample(tokens, seg, target, masking=True)
    off = window_to_sample(tokens, seg, target, masking=False)
    assert on["tokens"].tolist() == off["tokens"].tolist() == [5, 6, SEP, 7, 8, 9, SEP]
    assert on["labels"].tolist() == [6, SEP, 7, 8, 9, SEP, 4]
    assert on["position_ids"].tolist() == [0, 1, 2, 0, 1, 2, 3] and off["position_ids"].tolist() == list(range(7))
    # a separator's label is the next document's first token: invisible under masking, counted without
    assert on["loss_mask"].tolist() == [1, 1, 0, 1, 1, 1, 0] and off["loss_mask"].tolist() == [1] * 7
    assert on["doc_ids"].tolist() == seg[:-1].tolist() and on["doc_ids"].dtype == np.int32


def test_cu_seqlens_from_doc_ids():
    assert cu_seqlens_from_doc_ids(np.array([0, 0, 1, 2, 2, 2])).tolist() == [0, 2, 3, 6]


def test_whole_sample_packing_never_splits_samples_and_drops_the_too_long():
    rng = np.random.default_rng(0)
    samples = [(np.full(int(n), i, np.int64), (np.arange(int(n)) % 2).astype(np.int8))
               for i, n in enumerate(rng.integers(2, 30, 60))] + [(np.zeros(40, np.int64), np.ones(40, np.int8))]
    packed, dropped = pack_whole_samples(samples, 32, pad_id=-1, seed=2)
    assert dropped == [60] and packed.tokens.shape[1] == 33
    seen = Counter()
    assert len(packed.tokens) == len(packed.doc_ids) == len(packed.target) == len(packed.window_docs) > 0
    for row, ids, tgt, members in zip(packed.tokens, packed.doc_ids, packed.target, packed.window_docs):
        for k, i in enumerate(m for m in members if m >= 0):
            span = ids == k
            assert np.array_equal(row[span], samples[i][0]) and np.array_equal(tgt[span], samples[i][1])
            seen[i] += 1
        assert (tgt[row == -1] == 0).all()
    assert seen == Counter(range(60))  # each placeable sample exactly once
    fill = 1 - packed.num_pad / packed.tokens.size
    assert fill > 0.85, fill  # first-fit over open windows packs densely


@pytest.mark.parametrize("seq_length", [1, 2, 7, 64, 5000])
def test_a_multi_token_separator_loses_no_token_and_keeps_windows_exact(seq_length):
    sep = [997, 998, 999]  # "<s>" is several tokens with most tokenizers (Llama-3: '<s', '>')
    docs = _docs()
    packed = pack_documents(docs, seq_length, sep, seed=5)
    assert packed.tokens.shape[1] == seq_length + 1 and packed.tokens.shape == packed.doc_ids.shape
    real = packed.tokens[:, :-1].ravel()[packed.target[:, :-1].ravel() == 1]
    expected = Counter(t for d in docs for t in d) + Counter({s: len(docs) for s in sep})
    assert Counter(real.tolist()) == expected  # every token once, each document closed by the whole separator
    assert len(real) == sum(map(len, docs)) + len(sep) * len(docs)
    assert packed.num_pad == (packed.target == 0).sum() < seq_length + 1
    assert np.array_equal(packed.tokens[:-1, -1], packed.tokens[1:, 0])
    # the stream is d SEP d SEP ... in the seeded order, a separator cut at a window edge continues in the next
    stream = np.concatenate([np.r_[docs[i], sep] for i in packed.order])
    assert np.array_equal(real, stream)


def test_a_multi_token_separator_stays_in_its_documents_segment():
    sep = [7001, 7002]
    docs = [[1, 2, 3], [4], [5, 6]]
    packed = pack_documents(docs, 4, sep)  # stream: 1 2 3 S S 4 S S 5 6 S S; windows of 5 share one token
    assert packed.tokens.tolist() == [[1, 2, 3, 7001, 7002], [7002, 4, 7001, 7002, 5], [5, 6, 7001, 7002, 7001]]
    assert packed.doc_ids.tolist() == [[0, 0, 0, 0, 0], [0, 1, 1, 1, 2], [0, 0, 0, 0, 1]]
    assert packed.target[-1].tolist() == [1, 1, 1, 1, 0] and packed.num_pad == 1
    assert DocumentStream([3, 1], sep_length=2).segments(3, 6) == [(0, 3, 5), (1, 0, 1)]
