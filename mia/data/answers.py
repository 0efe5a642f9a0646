"""The VQA answer normalisation steps, written once, and the training-side use of them.

Two programs of the VQA world normalise answers with the SAME steps but apply them differently:

* the official evaluation (GT-Vision-Lab/VQA ``vqaEval.py``) applies them only to questions whose
  10 human answers disagree, to both sides; :mod:`mia.evaluation.vqa` implements that rule with
  the steps below;
* the training side (hengyuan-hu/bottom-up-attention-vqa ``tools/compute_softscore.py``, which BAN
  and most VQA v2 models reuse) normalises every answer the same way, always, to build the answer
  vocabulary and the soft targets: :func:`training_answer`.

Both import from here, so there is one copy of each step (this module sits below
:mod:`mia.data.preprocess` and :mod:`mia.evaluation`; it imports neither).

The steps, each reproducing the reference's quirks on purpose:

``clean_whitespace``: ``\\n`` and ``\\t`` become spaces, then strip.

``process_punctuation(text)``: for each mark of :data:`PUNCTUATION` (no apostrophe, colon or
period), if the ORIGINAL text has the mark followed or preceded by a space, or the text holds a
digit-comma-digit anywhere ("1,000"), every occurrence of the mark is deleted; otherwise each
becomes a space. Then periods not followed by a digit are deleted by ``(?!<=\\d)(\\.)(?!\\d)``,
whose ``(?!<=\\d)`` is a typo for a look-behind and a no-op ("5." loses its period, "2.5" keeps
it). The reference passes ``re.UNICODE`` as ``sub``'s third positional argument, which is
``count``: at most 32 periods are deleted.

``process_digit_article(text)``: lowercase, split on whitespace, the number words "none",
"zero".."ten" become digits, the articles "a", "an", "the" are dropped, each word found in the
contractions table is replaced (the table restores missing apostrophes, "dont" -> "don't", with
its oddities kept: "somebody'd" -> "somebodyd", and capitalised keys such as "Im" that can never
match after lowercasing), and the words are joined by single spaces.
"""

from __future__ import annotations

import re

PUNCTUATION: tuple[str, ...] = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_",
                                "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP_COUNT = int(re.UNICODE)  # 32: the reference's accidental ``count``
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
#: The reference contractions table, entry for entry (oddities included).
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}


def clean_whitespace(text: str) -> str:
    """Newlines and tabs to spaces, then strip (applied to every answer before anything else)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """The reference ``processPunctuation`` (see the module docstring)."""
    strip_all = _COMMA_STRIP.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or strip_all:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, _PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The reference ``processDigitArticle`` (see the module docstring)."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def training_answer(answer: str) -> str:
    """An answer as the training side compares it (compute_softscore's ``preprocess_answer``):
    punctuation, then digits/articles/contractions, ALWAYS (unanimous or not).

    Used for the answer vocabulary (multiple-choice answers) and for counting the human answers
    behind each soft score. Whitespace is cleaned first, as the evaluation does; the reference
    does not, which only matters for answers with tabs or newlines (none in VQA v2). The
    reference's final ``replace(',', '')`` is left out because it can never fire: "," is one of
    :data:`PUNCTUATION`, so no comma survives ``process_punctuation``.
    """
    return process_digit_article(process_punctuation(clean_whitespace(answer)))
