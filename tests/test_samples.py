"""Parallel samples (agent/samples.py): normalised answers, voting, early stop."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

import plait
import plait.api
from plait.agent.samples import llm_judge, normalise, variant, vote
from plait.llm.base import Delta, Request, Scorer, Usage
from plait.llm.replay import ReplayLLM


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("8,849 metres", "8849 m"),
        ("  The Danube. ", "danube"),
        ("2504.0 kilometres", "2504 km"),
        ("1.1607142857", "1.16"),
        ("William  Shakespeare", "william shakespeare!"),
        ("50 percent", "50%"),
    ],
)
def test_equal_answers_normalise_alike(a: str, b: str) -> None:
    assert normalise(a) == normalise(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("330", "331"),
        ("Danube", "Thames"),
        ("1.16", "1.17"),
        ("2 km", "2 km wide"),
        ("330", "330 meters"),
    ],
)
def test_different_answers_stay_different(a: str, b: str) -> None:
    assert normalise(a) != normalise(b)


async def test_early_stop_cancels_the_other_attempts_once_k_agree() -> None:
    """Three agree while two are still running: the two are cancelled, and stopped before
    the vote returns."""
    running = [asyncio.Event() for _ in range(5)]
    stopped: set[int] = set()

    async def attempt(i: int) -> str | None:
        running[i].set()
        if i in (0, 2, 4):
            await asyncio.gather(*(e.wait() for e in running))  # the slow ones are running
            return {0: "42", 2: "42 m", 4: "42.0"}[i]
        try:
            await asyncio.Event().wait()  # never answers by itself
        finally:
            stopped.add(i)
        return "never"

    result = await vote(attempt, 5, 3)
    assert result.answer == "42"
    assert result.decided_by == "agreement"
    assert stopped == {1, 3}
    assert [a.cut_short for a in result.attempts] == [False, True, False, True, False]
    assert result.cut_short == 2
    assert [a.answer for a in result.attempts] == ["42", None, "42 m", None, "42.0"]


async def test_without_agreement_the_majority_decides_and_nothing_is_cut_short() -> None:
    answers = ["Danube", "Thames", "the danube", "Rhine"]

    async def attempt(i: int) -> str | None:
        return answers[i]

    result = await vote(attempt, 4, 3)
    assert (result.answer, result.decided_by, result.cut_short) == ("Danube", "majority", 0)


async def test_failed_attempts_do_not_vote() -> None:
    async def attempt(i: int) -> str | None:
        if i == 0:
            raise RuntimeError("boom")
        return None if i == 1 else "7"

    result = await vote(attempt, 3, 2)
    assert result.answer == "7"
    assert result.attempts[0].error == "RuntimeError: boom"
    assert result.attempts[1].error == "no answer"


async def test_no_answer_at_all_is_none() -> None:
    async def attempt(i: int) -> str | None:
        return None

    result = await vote(attempt, 2, 2)
    assert (result.answer, result.decided_by) == (None, "none")


async def test_a_tie_goes_to_the_judge() -> None:
    seen: list[Sequence[str]] = []

    async def judge(answers: Sequence[str]) -> int | None:
        seen.append(list(answers))
        return 1

    async def attempt(i: int) -> str | None:
        return ["Paris", "Rome"][i]

    result = await vote(attempt, 2, 2, judge)
    assert seen == [["Paris", "Rome"]]
    assert (result.answer, result.decided_by) == ("Rome", "judge")


async def test_a_tie_without_a_judge_goes_to_the_first_answer() -> None:
    gate = asyncio.Event()

    async def attempt(i: int) -> str | None:
        if i == 0:
            await gate.wait()
            return "Paris"
        gate.set()
        return "Rome"

    result = await vote(attempt, 2, 2)
    assert (result.answer, result.decided_by) == ("Rome", "majority")


async def test_the_llm_judge_reads_the_number_it_replies() -> None:
    llm = ReplayLLM(["The best is 2."])
    judge = llm_judge(llm, "Which river is longer?")
    assert await judge(["Thames", "Danube"]) == 1
    assert "2. Danube" in llm.calls[0].messages[0]["content"]


def test_bad_counts_are_refused() -> None:
    async def attempt(i: int) -> str | None:
        return "x"

    with pytest.raises(ValueError, match="agree must be between 1 and samples"):
        asyncio.run(vote(attempt, 3, 4))


def test_tokens_saved_is_estimated_from_the_finished_attempts() -> None:
    from plait.agent.samples import Attempt, Vote

    v = Vote("x", "agreement", [Attempt(0, tokens=100), Attempt(1, tokens=30, cut_short=True)])
    assert v.tokens_saved() == 70


def test_attempts_after_the_first_sample_and_a_chooser_samples_its_choices() -> None:
    from plait.agent.samples import CHOICE_TEMPERATURE, SAMPLE_TEMPERATURE

    assert variant(0, None) == (None, 0.0)  # the run as asked
    assert variant(0, None, scores=True) == (None, 0.0)  # greedy choices
    assert variant(1, None) == (SAMPLE_TEMPERATURE, 0.0)
    assert variant(2, 0.3) == (0.3, 0.0)
    # A scoring model writes as asked and samples its choices instead.
    assert variant(3, None, scores=True) == (None, CHOICE_TEMPERATURE)
    assert variant(3, 0.5, scores=True) == (0.5, 0.5)


class FixedScorer:
    """A scoring model whose candidates always score `scores`; it counts its calls."""

    name = "fixed"
    supports_json_schema = False

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores
        self.calls = 0

    async def score(
        self, request: Request, prefix: str, candidates: Sequence[str]
    ) -> tuple[list[float], Usage]:
        self.calls += 1
        return list(self.scores[: len(candidates)]), Usage(10, len(candidates))

    def stream(self, request: Request) -> AsyncIterator[Delta]:
        raise AssertionError("a chooser is not asked to write")


def _pick(scorer: object, question: str, session: str | None = None) -> int:
    assert isinstance(scorer, Scorer)
    request = Request([{"role": "user", "content": question}], session=session)
    scores, _ = asyncio.run(scorer.score(request, "1. ", ["a", "b", "c"]))
    return max(range(3), key=scores.__getitem__)


def test_a_sampled_choice_is_drawn_from_the_softmax_of_the_scores() -> None:
    from plait.agent.samples import ChoiceSampler

    probs = [0.6, 0.3, 0.1]
    inner = FixedScorer([math.log(p) for p in probs])
    picks = Counter(_pick(ChoiceSampler(inner, seed, 1.0), "q") for seed in range(1, 1501))
    for k, p in enumerate(probs):
        assert abs(picks[k] / 1500 - p) < 0.05, picks
    # Colder: the best candidate nearly always.
    cold = Counter(_pick(ChoiceSampler(inner, seed, 0.1), "q") for seed in range(1, 201))
    assert cold[0] >= 195


def test_a_sampled_choice_is_fixed_by_the_seed_and_the_choice_point() -> None:
    from plait.agent.samples import ChoiceSampler

    inner = FixedScorer([0.0, 0.0, 0.0])  # a fair three-way choice
    for seed in range(5):
        assert _pick(ChoiceSampler(inner, seed), "q") == _pick(ChoiceSampler(inner, seed), "q")
    assert len({_pick(ChoiceSampler(inner, seed), "q") for seed in range(30)}) == 3
    assert len({_pick(ChoiceSampler(inner, 7), f"question {i}") for i in range(30)}) == 3


def test_the_calibration_prior_and_a_zero_temperature_are_not_sampled() -> None:
    from plait.agent.choose import NEUTRAL_SESSION
    from plait.agent.samples import ChoiceSampler

    inner = FixedScorer([0.0, -1.0, -2.0])
    request = Request([{"role": "user", "content": "q"}], session=NEUTRAL_SESSION)
    prior, _ = asyncio.run(ChoiceSampler(inner, 3).score(request, "", ["a", "b", "c"]))
    assert prior == [0.0, -1.0, -2.0]
    plain = Request([{"role": "user", "content": "q"}])
    kept, _ = asyncio.run(ChoiceSampler(inner, 3, 0.0).score(plain, "", ["a", "b", "c"]))
    assert kept == [0.0, -1.0, -2.0]


def test_a_model_that_does_not_score_is_not_made_a_scorer() -> None:
    from plait.agent.samples import ChoiceSampler

    assert not isinstance(ChoiceSampler(ReplayLLM(["x"]), 1), Scorer)
    assert isinstance(ChoiceSampler(FixedScorer([0.0]), 1), Scorer)


class FakeRun:
    def __init__(self, status: str, answer: str | None, error: str | None = None) -> None:
        self.status, self.answer, self.error = status, answer, error


async def test_sampled_runs_count_tokens_from_events_and_vote() -> None:
    from plait.agent.samples import sampled
    from plait.core import events as ev

    blocked = asyncio.Event()

    async def attempt(i: int, listen: ev.Listener) -> FakeRun:
        listen(ev.LLMStarted(0.0, 1, "planner", "m"))
        listen(ev.LLMFinished(0.1, 1, ev.Usage(90, 10)))
        if i == 2:
            listen(ev.LLMStarted(0.2, 2, "joiner", "m"))
            for _ in range(7):
                listen(ev.LLMToken(0.2, 2, "x"))
            try:
                await blocked.wait()
            finally:
                listen(ev.RunFinished(0.3, None))
        return FakeRun("done", "42") if i < 2 else FakeRun("failed", None)

    vote_, results = await sampled(attempt, 3, 2)
    assert vote_.answer == "42"
    assert sorted(results) == [0, 1]
    assert [a.tokens for a in vote_.attempts] == [100, 100, 107]
    assert vote_.attempts[2].cut_short
    assert vote_.tokens_saved() == 0  # it had used more than a whole attempt by then


async def test_sampled_raises_when_every_attempt_raised() -> None:
    from plait.agent.samples import sampled

    async def attempt(i: int, listen: object) -> FakeRun:
        raise ValueError(f"bad input {i}")

    with pytest.raises(ValueError, match="bad input 0"):
        await sampled(attempt, 2, 2)


async def test_an_attempt_without_an_answer_reports_why() -> None:
    from plait.agent.samples import sampled

    async def attempt(i: int, listen: object) -> FakeRun:
        if i == 0:
            return FakeRun("failed", None, "model error: local: out of memory")
        return FakeRun("done", "42")

    vote_, _ = await sampled(attempt, 3, 3)
    assert vote_.answer == "42"
    assert vote_.attempts[0].error == "model error: local: out of memory"
    assert vote_.attempts[0].to_dict()["error"] == "model error: local: out of memory"


async def test_a_resumed_attempt_goes_on_drawing_its_choices_as_it_did(monkeypatch) -> None:
    # Attempt i of samples=N draws its choices with seed i; a resume of that attempt (its run
    # `ID~i`) must draw with the same seed and temperature, not turn greedy.
    from plait.agent.samples import ChoiceSampler
    from plait.stores.memory import MemoryStore

    class Dies(FixedScorer):
        def stream(self, request: Request) -> AsyncIterator[Delta]:
            raise KeyboardInterrupt  # the process dies under the run's first model call

    @plait.tool
    def search(query: str) -> str:
        return query

    store = MemoryStore()
    with pytest.raises(KeyboardInterrupt):
        await plait.arun(
            "How tall?", tools=[search], model=ChoiceSampler(Dies([0.0]), 3, 0.5), store=store,
            run_id="r~4",
        )  # fmt: skip
    info = store.get("r~4")
    assert info is not None and info.options["choices"] == {"seed": 3, "temperature": 0.5}
    made: list[tuple[int, float]] = []

    class Seen(ChoiceSampler):
        def __init__(self, llm: Any, seed: int, temperature: float = 0.7) -> None:
            made.append((seed, temperature))
            super().__init__(llm, seed, temperature)

    monkeypatch.setattr(plait.api, "ChoiceSampler", Seen)
    replies = ['1. search("x")\n2. join()\n', "Thought: ok.\nAction: Finish(x)"]
    result = await plait.aresume("r~4", tools=[search], store=store, model=ReplayLLM(replies))
    assert result.status == "done", result.error
    assert made == [(3, 0.5)]
    plain = await plait.arun("How tall?", tools=[search], model=ReplayLLM(replies), store=store)
    kept = store.get(plain.run_id)
    assert kept is not None and "choices" not in kept.options  # a plain run draws nothing


async def test_a_doubted_answer_never_counts_towards_agreement() -> None:
    """Three attempts answer "330" but their plans argue against it: the vote waits for the
    others, and the one undoubted answer wins although it is alone."""
    answers = ["330", "330", "423", "330", "330"]

    async def attempt(i: int) -> str | None:
        return answers[i]

    result = await vote(attempt, 5, 3, doubt=lambda i: None if i == 2 else "partial")
    assert (result.answer, result.decided_by, result.chosen) == ("423", "plan check", 2)
    assert result.cut_short == 0
    assert [a.doubt for a in result.attempts] == ["partial"] * 2 + [None] + ["partial"] * 2


async def test_undoubted_answers_agree_as_before_and_stop_the_rest() -> None:
    release = asyncio.Event()

    async def attempt(i: int) -> str | None:
        if i == 4:
            await release.wait()  # never released: cut short
        return "7" if i < 4 else "8"

    result = await vote(attempt, 5, 2, doubt=lambda i: "partial" if i == 0 else None)
    assert (result.answer, result.decided_by) == ("7", "agreement")
    assert result.chosen in (1, 2, 3)
    assert result.attempts[4].cut_short


async def test_when_every_answer_is_doubted_the_majority_of_them_decides() -> None:
    answers = ["330", "93", "330"]

    async def attempt(i: int) -> str | None:
        return answers[i]

    result = await vote(attempt, 3, 3, doubt=lambda i: "partial")
    assert (result.answer, result.decided_by, result.chosen) == ("330", "majority", 0)


class HalfDone:
    """A model whose sampled attempts stop short: at temperature 0 it plans the sum of the
    two heights, sampled it plans only their lookups, and its joiner answers the sum when
    the results hold it, else the first height (as the embedded model does)."""

    name = "half-done"
    supports_json_schema = False

    async def stream(self, request: Request) -> AsyncIterator[Delta]:
        last = str(request.messages[-1]["content"])
        if "Eiffel Tower in Paris" in last:  # a join: the last turn holds the search results
            yield Delta(f"Action: Finish({'423' if '423' in last else '330'} metres)")
            return
        plan = (
            '1. search("Eiffel Tower")\n2. search("Statue of Liberty")\n'
            "3. extract_number($1)\n4. extract_number($2)\n"
        )
        if request.temperature:
            yield Delta(plan + "5. join()\n")
        else:
            yield Delta(plan + '5. calculate("$3 + $4")\n6. join()\n')


async def test_sampled_attempts_that_stop_short_are_outvoted_by_the_one_that_did_not(
    example_tools,
) -> None:
    """Two sampled attempts agree on one height of two; the greedy one adds them. The two
    agree, but their plans computed a number their answer leaves out: the sum wins."""
    result = await plait.arun(
        "What is the combined height of the Eiffel Tower and the Statue of Liberty?",
        tools=plait.load_tools(str(example_tools)),
        model=HalfDone(),
        samples=3,
        agree=2,
    )
    assert result.answer == "423 metres"
    assert result.savings is not None and result.savings["decided_by"] == "plan check"
    attempts = result.attempts or []
    assert [a["answer"] for a in attempts] == ["423 metres", "330 metres", "330 metres"]
    left_out = "the answer leaves out 93, task 4's result"
    assert [a["doubt"] for a in attempts] == [None, left_out, left_out]
    assert not any(a["cut_short"] for a in attempts)
