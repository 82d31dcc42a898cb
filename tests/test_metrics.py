"""eval/metrics.py against hand-computed cases and the official SQuAD v1.1 script's behaviour."""

import math

import pytest

from eval.metrics import (bootstrap_ci, citation_correct, cis_overlap, contains_answer, exact_match, is_supported,
                          mrr_at_k, ndcg_at_k, normalize_answer, paired_bootstrap_ci, percentile, recall_at_k,
                          support_score, token_f1)


# ---- SQuAD normalisation (official v1.1: lower -> drop punctuation -> drop articles -> fold whitespace)

@pytest.mark.parametrize("raw, norm", [
    ("The Eiffel Tower", "eiffel tower"),
    ("  an   apple, a day!  ", "apple day"),
    ("Theory of the Atom", "theory of atom"),      # 'the' only as a whole word: 'Theory' stays
    ("U.S.A.", "usa"),                             # punctuation removed, not replaced by spaces
    ("Denver Broncos.", "denver broncos"),
    ("a-b", "ab"),
    ("\"Anne\" said: 'hi'", "anne said hi"),
    ("A", ""),
    ("", ""),
    ("1,000", "1000"),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_articles_removed_after_punctuation_like_the_official_script():
    # official order removes punctuation first, so "the." becomes "the" and then is dropped
    assert normalize_answer("the.") == ""
    assert normalize_answer("(a) cat") == "cat"


def test_exact_match_max_over_golds():
    assert exact_match("the Denver Broncos", ["Broncos", "Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Broncos", "Denver Broncos"]) == 0.0
    assert exact_match("Denver", "denver.") == 1.0
    assert exact_match("anything", []) == 0.0


def test_token_f1_hand_computed():
    # pred tokens [denver, broncos, won], gold [denver, broncos]: P=2/3 R=1 -> F1=0.8
    assert token_f1("Denver Broncos won", ["Denver Broncos"]) == pytest.approx(0.8)
    # max over golds: vs "Broncos" P=1/3 R=1 -> 0.5; vs "Denver Broncos" 0.8
    assert token_f1("Denver Broncos won", ["Broncos", "Denver Broncos"]) == pytest.approx(0.8)
    # repeated tokens count with multiplicity: pred [a1 a1 b] (articles aside) -> use words
    # pred [new, new, york], gold [new, york]: common new x1, york x1 -> P=2/3, R=1 -> 0.8
    assert token_f1("new new york", "New York") == pytest.approx(0.8)
    assert token_f1("Paris", "London") == 0.0
    assert token_f1("x", []) == 0.0


def test_f1_of_only_articles_is_zero_like_official_v11():
    # both normalise to empty: v1.1 gives F1 0 but EM 1
    assert token_f1("The", ["a"]) == 0.0
    assert exact_match("The", ["a"]) == 1.0


# ---- ranking

def test_recall_mrr_single_relevant():
    ranked = ["d3", "d1", "d7", "d2"]
    assert recall_at_k(ranked, {"d1"}, 1) == 0.0
    assert recall_at_k(ranked, {"d1"}, 2) == 1.0
    assert mrr_at_k(ranked, {"d1"}, 10) == pytest.approx(0.5)
    assert mrr_at_k(ranked, {"d1"}, 1) == 0.0
    assert mrr_at_k(ranked, {"d9"}, 10) == 0.0
    assert recall_at_k(ranked, set(), 5) == 0.0


def test_recall_general_case():
    assert recall_at_k(["a", "b", "c", "d"], {"a", "c", "z"}, 3) == pytest.approx(2 / 3)
    assert mrr_at_k(["x", "y", "c"], {"a", "c"}, 5) == pytest.approx(1 / 3)


def test_ndcg_single_relevant_is_one_over_log2_rank_plus_one():
    assert ndcg_at_k(["a", "b", "c"], {"a"}, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["b", "a", "c"], {"a"}, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(["b", "c", "a"], {"a"}, 2) == 0.0


def test_ndcg_general_binary_and_graded():
    # relevant {a, c}; ranking a, b, c: DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3)
    assert ndcg_at_k(["a", "b", "c"], {"a", "c"}, 3) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    # graded: gains a=3, b=1; ranking b, a: DCG = 1 + 3/log2(3); IDCG = 3 + 1/log2(3)
    got = ndcg_at_k(["b", "a"], {"a": 3, "b": 1}, 2)
    assert got == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))
    # duplicates in the ranking count once
    assert ndcg_at_k(["a", "a"], {"a", "b"}, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_bad_k_is_a_clear_error():
    with pytest.raises(ValueError, match="k must be a positive integer"):
        recall_at_k(["a"], {"a"}, 0)


# ---- statistics

def test_percentile_matches_linear_interpolation():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10], 95) == 10
    assert percentile([1, 2, 3, 4, 5], 95) == pytest.approx(4.8)
    assert math.isnan(percentile([], 50))


def test_bootstrap_ci_seeded_and_sensible():
    values = [1.0] * 30 + [0.0] * 70
    lo, hi = bootstrap_ci(values, n=500, seed=1)
    assert (lo, hi) == bootstrap_ci(values, n=500, seed=1)      # deterministic
    assert (lo, hi) != bootstrap_ci(values, n=500, seed=2)      # seed matters
    assert lo < 0.3 < hi
    # normal approximation: sd of the mean = sqrt(.3*.7/100) = 0.0458 -> 95% half-width ~0.09
    assert 0.06 < (hi - lo) / 2 < 0.12
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], alpha=1.5)


def test_cis_overlap():
    assert cis_overlap((0.1, 0.3), (0.25, 0.4))
    assert not cis_overlap((0.1, 0.2), (0.25, 0.4))


# ---- faithfulness

def test_support_score_and_is_supported():
    sources = ["The tower was built in 1889 by Gustave Eiffel.", "Paris is the capital."]
    assert support_score("Gustave Eiffel", sources) == 1.0
    assert support_score("Gustave Rossi", sources) == 0.5
    assert support_score("", sources) == 0.0
    assert support_score("Eiffel", []) == 0.0
    assert is_supported("in 1889", sources)
    assert not is_supported("in 1890", sources)
    assert is_supported("in 1890", sources, threshold=0.5)


def test_contains_answer_on_token_boundaries():
    assert contains_answer("It opened in 1889, to the public.", ["1889"])
    assert contains_answer("The Denver Broncos won.", ["denver broncos"])
    assert not contains_answer("In 18890 nothing happened.", ["1889"])
    assert not contains_answer("anything", ["the"])      # an answer that normalises to empty never matches


def test_citation_correct():
    sources = ["Paris is in France.", "The tower was finished in 1889."]
    assert citation_correct([2], sources, ["1889"])
    assert not citation_correct([1], sources, ["1889"])
    assert citation_correct([1, 2], sources, ["1889"])
    assert not citation_correct([3, 0], sources, ["1889"])  # out of range
    assert not citation_correct([], sources, ["1889"])


def test_paired_bootstrap_ci_of_a_difference():
    a = [0.0, 1.0, 0.5, 1.0, 0.0, 1.0] * 20
    assert paired_bootstrap_ci(a, a, n=200) == (0.0, 0.0)
    lo, hi = paired_bootstrap_ci([x + 0.1 for x in a], a, n=200, seed=3)
    assert abs(lo - 0.1) < 1e-9 and abs(hi - 0.1) < 1e-9  # a constant shift: no spread at all
    lo, hi = paired_bootstrap_ci([1.0] * 60 + [0.0] * 60, [0.0] * 60 + [1.0] * 60, n=500)
    assert lo < 0 < hi
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap_ci([1.0], [1.0, 0.0])
