"""The reconcile timer's schedule: a six-field NCRONTAB expression, as the Functions timer trigger reads it.

``{second} {minute} {hour} {day} {month} {day-of-week}``; each field is ``*``, a value, a range ``a-b``, a
list ``a,b``, or any of those with a step ``/n``. Months and days of the week may be names or three-letter
abbreviations (``Jan``, ``Mon``), case-insensitive; day-of-week 0 is Sunday. (Microsoft docs, "Timer trigger
for Azure Functions", NCRONTAB expressions.) As in NCrontab (atifaziz/NCrontab, NCrontab/CrontabSchedule.cs,
``TryGetNextOccurrence``), which the host uses, a time must match the day of the month *and* the day of the
week, and the next occurrence is strictly after the base time. Times are UTC (the host's default).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 6),
)
_MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_SEARCH_DAYS = 366 * 28  # the calendar repeats every 28 years (within a century): any possible day recurs


class ScheduleError(ValueError):
    """The expression is not a six-field NCRONTAB expression; the message says which field and why."""


def _value(text: str, name: str, low: int, high: int) -> int:
    word = text.strip().lower()
    names = _MONTHS if name == "month" else _DAYS if name == "day-of-week" else ()
    for index, full in enumerate(names):
        if len(word) >= 3 and full.startswith(word):  # noqa: PLR2004 - "Mon", "Monday", "Tues"
            return index + low
    if not word.isdigit():
        raise ScheduleError(f"{name} field: {text!r} is not a number")
    value = int(word)
    if not low <= value <= high:
        raise ScheduleError(f"{name} field: {value} is outside {low}-{high}")
    return value


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"{name} field: empty list item in {text!r}")
        span, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"{name} field: step {step_text!r} is not a positive number")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            start, _, end = span.partition("-")
            first, last = _value(start, name, low, high), _value(end, name, low, high)
            if first > last:
                raise ScheduleError(f"{name} field: range {span!r} runs backwards")
        else:
            first = _value(span, name, low, high)
            last = high if slash else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    """A parsed six-field NCRONTAB expression."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday

    @classmethod
    def parse(cls, expression: str) -> Schedule:
        """Parse ``expression``; raise `ScheduleError` naming the bad field."""
        parts = expression.split()
        if len(parts) != len(_FIELDS):
            raise ScheduleError(
                f"{expression!r} has {len(parts)} fields; NCRONTAB needs six: "
                "{second} {minute} {hour} {day} {month} {day-of-week}"
            )
        fields = [_field(text, *spec) for text, spec in zip(parts, _FIELDS, strict=True)]
        return cls(expression, *fields)

    def _day_matches(self, day: datetime) -> bool:
        weekday = (day.weekday() + 1) % 7  # Python: Monday=0; NCRONTAB: Sunday=0
        return day.day in self.days and day.month in self.months and weekday in self.weekdays

    def next_after(self, moment: datetime) -> datetime:
        """The first time strictly after ``moment`` (UTC) that the schedule fires."""
        base = moment.astimezone(UTC).replace(microsecond=0)
        start_day = base.replace(hour=0, minute=0, second=0)
        for offset in range(_SEARCH_DAYS):
            day = start_day + timedelta(days=offset)
            if not self._day_matches(day):
                continue
            for hour in sorted(self.hours):
                if offset == 0 and hour < base.hour:
                    continue
                for minute in sorted(self.minutes):
                    for second in sorted(self.seconds):
                        candidate = day.replace(hour=hour, minute=minute, second=second)
                        if candidate > base:
                            return candidate
        raise ScheduleError(f"{self.expression!r} never fires (no matching day within {_SEARCH_DAYS} days)")
