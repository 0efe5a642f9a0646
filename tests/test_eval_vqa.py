"""Official VQA accuracy: every normalisation step and scoring branch of the CURRENT vqaEval.py
(GT-Vision-Lab/VQA a013f00, "Fixed processing answers bug"), each expected value worked out by
hand from that code (the rule is written out in mia/evaluation/vqa.py's docstring)."""

from __future__ import annotations

import json

import pytest

from mia.cli import main
from mia.data.answers import process_digit_article, process_punctuation, training_answer
from mia.data.errors import DataFormatError
from mia.evaluation.vqa import (
    VQAEvalError,
    evaluate_vqa,
    question_accuracy,
    round_like_reference,
    write_test_server_results,
)

# ----------------------------------------------------------------------------- processPunctuation


@pytest.mark.parametrize("text, expected", [
    # no space next to "!" in the input: the mark becomes a space
    ("yes!", "yes "),
    # " !" occurs in the input: the mark is deleted
    ("yes !", "yes "),
    # "-" with no space next to it anywhere: replaced by a space
    ("hot-dog", "hot dog"),
    # "- " occurs once, so EVERY "-" of the answer is deleted (the test is per mark, on the input)
    ("a- b-c", "a bc"),
    # ", " occurs: "," deleted; without the space it becomes a space
    ("red, white", "red white"),
    ("red,white", "red white"),
    # commaStrip: a digit-comma-digit anywhere deletes every mark, none becomes a space
    ("1,000", "1000"),
    ("2,000-3,000", "20003000"),
    # same marks without a digit-comma-digit: "," and "-" become spaces
    ("2,a-3", "2 a 3"),
    # periodStrip deletes periods not followed by a digit...
    ("a.m.", "am"),
    ("u.s.a", "usa"),
    # ...keeps those followed by one...
    ("2.5", "2.5"),
    (".5", ".5"),
    # ...and its "(?!<=\d)" is a no-op (not a look-behind): a period after a digit still goes
    ("5.", "5"),
    # apostrophes, colons, "#", "&" are not in the punctuation list
    ("don't", "don't"),
    ("3:00", "3:00"),
    ("#1 & co", "#1 & co"),
    # every listed mark, none next to a space: each becomes a space
    ('a;b/c[d]e"f{g}h(i)j=k+l\\m_n-o>p<q@r`s,t?u!v',
     "a b c d e f g h i j k l m n o p q r s t u v"),
])
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


def test_period_strip_count_quirk():
    # The official call passes re.UNICODE (= 32) as sub's ``count``: only 32 periods go.
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("." * 32) == ""


# --------------------------------------------------------------------------- processDigitArticle


@pytest.mark.parametrize("text, expected", [
    # lowercased, number words to digits
    ("Two Dogs", "2 dogs"),
    ("none", "0"), ("zero", "0"), ("one", "1"), ("ten", "10"),
    ("eleven", "eleven"),  # only none/zero..ten are in the map
    # articles dropped (after the number map: "a one" -> "1")
    ("a dog", "dog"), ("an apple", "apple"), ("the an a", ""), ("a one", "1"),
    # contractions: missing apostrophes restored, whole words only
    ("dont", "don't"), ("isnt it", "isn't it"), ("twas", "'twas"), ("yall", "y'all"),
    ("dontcha", "dontcha"),
    # the official table's oddities: a reversed entry, and capitalised keys never match
    ("somebody'd", "somebodyd"), ("Im", "im"), ("Ive", "ive"),
    # whitespace collapsed by split/join
    ("  two   dogs ", "2 dogs"),
])
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


def test_training_answer_always_normalises():
    # The training side (compute_softscore) applies both steps to every answer, always.
    assert training_answer("The two dogs!\n") == "2 dogs"
    assert training_answer("A dont.") == "don't"
    assert training_answer("Yes") == "yes"
    assert training_answer("1,000") == "1000"


# ------------------------------------------------------------------------------ question accuracy


@pytest.mark.parametrize("matches, expected", [
    # m of the 10 humans said "cat", the rest "dog". Human i scores min(1, m_i / 3) with m_i the
    # matches among the OTHER nine: a "cat" human sees m - 1, a "dog" human m.
    (0, 0.0),   # all 0
    (1, 0.3),   # (1 * 0/3 + 9 * 1/3) / 10 = 3/10
    (2, 0.6),   # (2 * 1/3 + 8 * 2/3) / 10 = 6/10
    (3, 0.9),   # (3 * 2/3 + 7 * 1) / 10 = 9/10
    (4, 1.0),   # (4 * 1 + 6 * 1) / 10
    (9, 1.0),
])
def test_per_answer_outcomes(matches, expected):
    humans = ["cat"] * matches + ["dog"] * (10 - matches)
    assert question_accuracy("cat", humans) == pytest.approx(expected, abs=1e-12)


# (human answers, model answer, accuracy, why): worked by hand from the current vqaEval.py.
WORKED = [
    # -- unanimous humans (len(set) == 1): NOTHING is normalised beyond whitespace
    (["yes"] * 10, "yes", 1.0, "unanimous, identical"),
    (["yes"] * 10, "Yes", 0.0, "unanimous: no lowercasing of the model answer"),
    (["yes."] * 10, "yes.", 1.0, "unanimous 'yes.': compared as stored"),
    (["yes."] * 10, "Yes.", 0.0, "unanimous 'yes.': case matters"),
    (["yes."] * 10, "yes", 0.0, "unanimous 'yes.': the period is not stripped"),
    (["two"] * 10, "two", 1.0, "unanimous number word: matches as stored"),
    (["two"] * 10, "2", 0.0, "unanimous number word: no digit mapping"),
    (["the cat"] * 10, "cat", 0.0, "unanimous: articles stay"),
    (["dont"] * 10, "don't", 0.0, "unanimous: no contraction fix"),
    (["t-shirt"] * 10, "t shirt", 0.0, "unanimous: no punctuation step"),
    # -- whitespace is cleaned on both sides, always, BEFORE the unanimity test
    (["yes"] * 10, " yes\n", 1.0, "model answer: newline to space, stripped"),
    (["yes\t"] * 10, "yes", 1.0, "human answers: tab to space, stripped"),
    (["yes"] * 5 + [" yes"] * 5, "Yes", 0.0, "unanimous once stripped: still no lowercasing"),
    # -- humans disagree: both sides get processPunctuation then processDigitArticle
    (["yes"] * 3 + ["no"] * 7, "YES", 0.9, "case: 'YES' -> 'yes', 3 humans match"),
    (["two"] * 9 + ["3"], "2", 1.0, "number words: humans 'two' -> '2', 9 match"),
    (["2"] * 9 + ["3"], "two", 1.0, "number words: model 'two' -> '2'"),
    (["none"] * 4 + ["1"] * 6, "0", 1.0, "'none' -> '0'"),
    (["the cat"] * 2 + ["dog"] * 8, "a cat", 0.6, "articles: 'the cat', 'a cat' -> 'cat', 2 match"),
    (["dont"] * 4 + ["no"] * 6, "don't", 1.0, "contractions: 'dont' -> 'don't', 4 match"),
    (["Im"] * 4 + ["no"] * 6, "I'm", 0.0, "the table's 'Im' key never matches after lowercase"),
    (["t-shirt"] * 3 + ["shirt"] * 7, "t shirt", 0.9, "'-' becomes a space on both sides"),
    (["red!"] * 3 + ["blue"] * 7, "red", 0.9, "'red!' -> 'red ' -> split/join -> 'red'"),
    (["1,000"] * 4 + ["1000"] * 6, "1000", 1.0, "digit-comma-digit: the comma goes, 10 match"),
    (["a.m."] * 5 + ["am"] * 5, "A.M.", 1.0, "periods not before a digit go: all 'am'"),
    (["2.5"] * 3 + ["2"] * 7, "2.5", 0.9, "a period before a digit stays"),
    (["red"] * 2 + ["dark red"] * 8, "Red.", 0.6, "'Red.' -> 'red', 2 match"),
    (["red"] + ["blue"] * 9, "the red", 0.3, "'the red' -> 'red', 1 match"),
    (["cat"] * 4 + ["dog"] * 6, " Cat\t", 1.0, "whitespace, then case"),
]


@pytest.mark.parametrize("humans, answer, expected, why", WORKED, ids=[w[3] for w in WORKED])
def test_worked_cases(humans, answer, expected, why):
    assert question_accuracy(answer, humans) == pytest.approx(expected, abs=1e-12), why


def _records(*groups):
    """Answer records WITHOUT answer_id: (answer, confidence, count) groups."""
    return [{"answer": a, "answer_confidence": c} for a, c, n in groups for _ in range(n)]


@pytest.mark.parametrize("records, expected, why", [
    # VQA v2 records carry a unique answer_id, so "the others" are the other nine:
    ([{"answer": "yes", "answer_confidence": "yes", "answer_id": i} for i in range(4)]
     + [{"answer": "no", "answer_confidence": "yes", "answer_id": 4 + i} for i in range(6)],
     1.0, "distinct records: 4 matches"),
    # Records equal in every field drop out together (item != gtAnsDatum): a "yes" human sees
    # none of the four "yes" records -> 0; a "no" human sees all 4 -> min(1, 4/3) = 1.
    # (4 * 0 + 6 * 1) / 10 = 0.6
    (_records(("yes", "yes", 4), ("no", "yes", 6)), 0.6, "identical records drop together"),
    # yes/yes humans see the 2 yes/maybe -> 2/3; yes/maybe see the 2 yes/yes -> 2/3; the "no"
    # humans see all 4 -> 1: (4 * 2/3 + 6) / 10 = 0.8666..
    (_records(("yes", "yes", 2), ("yes", "maybe", 2), ("no", "yes", 6)), (8 / 3 + 6) / 10,
     "records differing in confidence are 'other'"),
])
def test_answer_records_compared_as_whole_dicts(records, expected, why):
    assert question_accuracy("yes", records) == pytest.approx(expected, abs=1e-12), why


def test_rounding_is_python2s_half_away_from_zero():
    # 269 of 800 questions right: 100 * 269 / 800 = 33.625 exactly in binary, a true tie.
    # Python 2's round (the reference's interpreter) gives 33.63; Python 3's would give 33.62.
    assert round(33.625, 2) == 33.62  # what a Python 3 port of vqaEval.py would print
    assert round_like_reference(33.625, 2) == 33.63
    assert round_like_reference(2 / 3 * 100, 2) == 66.67
    assert round_like_reference(12.344999, 2) == 12.34
    cases = [(q, "t", "yes/no", ["yes"] * 10, "yes" if q < 269 else "no") for q in range(800)]
    assert evaluate_vqa(*_dataset(cases))["overall"] == 33.63


def _dataset(cases):
    """questions, annotations, results dicts from (qid, question_type, answer_type, humans, res)."""
    questions = {"questions": [{"question_id": q, "image_id": 1, "question": "?"}
                               for q, *_ in cases]}
    annotations = {"annotations": [
        {"question_id": q, "image_id": 1, "question_type": qt, "answer_type": at,
         "multiple_choice_answer": humans[0],
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                     for i, a in enumerate(humans)]}
        for q, qt, at, humans, _ in cases]}
    results = [{"question_id": q, "answer": res} for q, *_, res in cases]
    return questions, annotations, results


CASES = [
    # qid, question type, answer type, 10 human answers, result answer -> accuracy (by hand)
    (1, "how many", "number", ["2"] * 10, "2"),                     # 1.0
    (2, "how many", "number", ["two"] * 10, "two"),                 # 1.0 (unanimous, as stored)
    (3, "how many", "number", ["2"] * 9 + ["3"], "two"),            # 1.0 ("two" -> "2", 9 match)
    (4, "is the", "yes/no", ["yes"] * 3 + ["no"] * 7, "Yes"),       # 0.9 ("yes": 3 match)
    (5, "what color is the", "other", ["red"] * 2 + ["dark red"] * 8, "Red."),  # 0.6 (2 match)
    (6, "what color is the", "other", ["red"] + ["blue"] * 9, "the red"),       # 0.3 (1 match)
]


def test_overall_per_type_and_per_question():
    acc = evaluate_vqa(*_dataset(CASES))
    assert acc["perQuestion"] == {1: 100.0, 2: 100.0, 3: 100.0, 4: 90.0, 5: 60.0, 6: 30.0}
    # (1 + 1 + 1 + 0.9 + 0.6 + 0.3) / 6 = 0.8 -> 80.0
    assert acc["overall"] == 80.0
    # number (1 + 1 + 1) / 3 -> 100; yes/no 90; other (0.6 + 0.3) / 2 -> 45
    assert acc["perAnswerType"] == {"number": 100.0, "yes/no": 90.0, "other": 45.0}
    assert acc["perQuestionType"] == {"how many": 100.0, "is the": 90.0,
                                      "what color is the": 45.0}


def test_rounding_to_two_decimals():
    cases = [
        # 3 humans x, x, y; result x: x-humans see 1 match (1/3), y sees 2 (2/3)
        # (1/3 + 1/3 + 2/3) / 3 = 4/9 = 0.4444.. -> 44.44
        (1, "t", "other", ["x", "x", "y"], "x"),
        # 5 humans x, y, y, y, y; result x: x sees 0, each y sees 1
        # (4 * 1/3) / 5 = 0.26666.. -> 26.67
        (2, "t", "other", ["x", "y", "y", "y", "y"], "x"),
    ]
    acc = evaluate_vqa(*_dataset(cases))
    assert acc["perQuestion"] == {1: 44.44, 2: 26.67}
    # overall from the unrounded values: (4/9 + 4/15) / 2 = 0.35555.. -> 35.56
    assert acc["overall"] == 35.56


def test_result_errors_name_the_question_and_file(tmp_path):
    questions, annotations, results = _dataset(CASES)
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(results[:-1]))
    with pytest.raises(VQAEvalError, match=r"answers\.json: no answer for question 6"):
        evaluate_vqa(questions, annotations, path)
    path.write_text(json.dumps(results + [{"question_id": 99, "answer": "x"}]))
    with pytest.raises(VQAEvalError, match=r"answers\.json: question 99 is not in"):
        evaluate_vqa(questions, annotations, path)
    path.write_text(json.dumps(results + [results[0]]))
    with pytest.raises(VQAEvalError, match=r"answers\.json: \[6\]: question 1 has more than one"):
        evaluate_vqa(questions, annotations, path)
    with pytest.raises(VQAEvalError, match="no annotation for question 6"):
        evaluate_vqa(questions, {"annotations": annotations["annotations"][:-1]}, results)


def test_cli(tmp_path):
    paths = {}
    for name, obj in zip(("questions", "annotations", "results"), _dataset(CASES), strict=True):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(obj))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "vqa", "--questions", str(paths["questions"]),
                 "--annotations", str(paths["annotations"]), "--results", str(paths["results"]),
                 "--out", str(out)]) == 0
    acc = json.loads(out.read_text())
    assert set(acc) == {"overall", "perAnswerType", "perQuestionType", "perQuestion"}
    assert acc["overall"] == 80.0 and acc["perAnswerType"]["number"] == 100.0
    assert acc["perQuestion"]["4"] == 90.0


def test_test_server_result_file(tmp_path):
    questions = {"questions": [{"question_id": q, "image_id": 1, "question": "?"}
                               for q in (30, 10, 20)]}
    out = write_test_server_results({10: "yes", 20: "2", 30: "red"}, questions,
                                    tmp_path / "vqa_results.json")
    # one entry per question, in the questions file's order, ids as ints
    assert json.loads(out.read_text()) == [{"question_id": 30, "answer": "red"},
                                           {"question_id": 10, "answer": "yes"},
                                           {"question_id": 20, "answer": "2"}]
    with pytest.raises(VQAEvalError, match="no answer for question 20"):
        write_test_server_results({10: "yes", 30: "red"}, questions, tmp_path / "x.json")
    with pytest.raises(VQAEvalError, match="question 40 is not in"):
        write_test_server_results({10: "a", 20: "b", 30: "c", 40: "d"}, questions,
                                  tmp_path / "x.json")
    with pytest.raises(VQAEvalError, match="question 10 has more than one"):
        write_test_server_results([{"question_id": 10, "answer": "a"},
                                   {"question_id": 10, "answer": "b"}], questions,
                                  tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()

    # the same through the command line
    qpath, rpath = tmp_path / "q.json", tmp_path / "r.json"
    qpath.write_text(json.dumps(questions))
    rpath.write_text(json.dumps([{"question_id": q, "answer": "no"} for q in (20, 30, 10)]))
    assert main(["evaluate", "vqa-server", "--questions", str(qpath), "--results", str(rpath),
                 "--out", str(tmp_path / "server.json")]) == 0
    assert [r["question_id"] for r in json.loads((tmp_path / "server.json").read_text())] == [
        30, 10, 20]


def test_annotation_for_another_image_is_an_error():
    # A shifted annotations file used to score silently (the reference never compares).
    questions, annotations, results = _dataset(CASES)
    annotations["annotations"][2]["image_id"] = 7
    with pytest.raises(DataFormatError, match=r"question 3.*'image_id'.*7 differs from "
                                              r"image_id 1"):
        evaluate_vqa(questions, annotations, results)
