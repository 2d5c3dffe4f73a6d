"""The indefinite article before a word, for every sentence the project writes about a class ("an overskirt").

"a"/"an" goes by sound, and the spelling gives the sound except for a few word starts, listed here in lower
case: a vowel letter read as a consonant ("a unicorn", "a one-piece", "a euphonium") and a silent h ("an
hour"). A small rule, not a dictionary: "uni" also catches the rare "unimportant", and acronyms ("an SUV") are
read letter by letter only if the caller spells them so.
"""

from __future__ import annotations

A_BEFORE_VOWEL_LETTER = ("uni", "use", "usu", "uti", "ure", "uk", "eu", "ewe", "one", "once")
AN_BEFORE_CONSONANT_LETTER = ("hour", "honest", "honor", "honour", "heir")


def indefinite_article(word: str) -> str:
    """'a' or 'an' for `word`: 'an' before a vowel letter, less the documented exceptions either way."""
    start = word.lower()
    if start.startswith(AN_BEFORE_CONSONANT_LETTER):
        return "an"
    if start.startswith(A_BEFORE_VOWEL_LETTER):
        return "a"
    return "an" if start[:1] in ("a", "e", "i", "o", "u") else "a"
