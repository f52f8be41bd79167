"""Self-instruct request building, parsing and the AIPO pipeline's filters."""

from __future__ import annotations

from prefdata.self_instruct import SelfInstructConfig, build_request, filter_instruction, parse_response


def test_request_and_parse_round_trip():
    req = build_request([f"Seed task {i}\nwith a newline" for i in range(1, 9)])
    lines = req.splitlines()
    assert lines[0] == "Come up with a series of tasks:" and lines[2] == "1. Seed task 1 with a newline"
    assert lines[-1] == "9."
    got = parse_response(" Write a poem about autumn.\n10. Explain how tides work.\n11. extra", 9)
    assert got[:2] == ["Write a poem about autumn.", "Explain how tides work."]


def test_filters():
    cfg = SelfInstructConfig()
    keep = "Explain the difference between weather and climate."
    assert filter_instruction(keep, 9, cfg) == (keep, "kept")
    assert filter_instruction("Hi", 1, cfg)[1] == "length"
    assert filter_instruction("x " * 600, 600, cfg)[1] == "length"
    assert filter_instruction("Draw a picture of a cat.", 7, cfg)[1] == "banned_keyword"
    assert filter_instruction("Plot the data from this file.", 7, cfg)[1] == "banned_keyword"
    assert filter_instruction("Please go to the website and summarize it.", 9, cfg)[1] == "banned_keyword"
    assert filter_instruction("Write a program that sorts a list.", 8, cfg)[1] == "template"
    assert filter_instruction("Task definition: classify the sentence.", 7, cfg)[1] == "template"
    assert filter_instruction("- List three fruits.", 5, cfg)[1] == "leading_char"
    assert filter_instruction("Éxplain gravity to a child.", 6, cfg)[1] == "leading_char"
    # "Mapping" is not the banned word "map"; an answer after "Output:" is cut off.
    assert filter_instruction("Describe mapping in mathematics.", 5, cfg)[1] == "kept"
    assert filter_instruction("Translate 'cat' to French. Output: chat", 9, cfg)[0] == "Translate 'cat' to French."
    assert filter_instruction("Example: 2+2. Answer: 4. Now add 3+3.", 12, cfg)[0].endswith("3+3.")
