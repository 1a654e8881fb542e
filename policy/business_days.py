"""Business days: Monday to Friday, minus the public holidays of the provider's country (and subdivision).

The privacy statement promises notice of a change "at least thirty (30) business days prior to the change
taking effect". The holidays come from the `holidays` package (maintained calendars for some 200 countries),
not from tables of our own. A notice sent on day D counts the business days strictly after D and strictly
before the effective date: neither the day it goes out nor the day the change takes effect counts.
"""
from __future__ import annotations

from datetime import date, timedelta


class Calendar:
    def __init__(self, country: str, subdivision: str = ""):
        """Raises ValueError naming what `holidays` does not know (the country, or its subdivision)."""
        import holidays         # here: it costs every command 50 ms at import, and only terms need it
        try:
            self._holidays = holidays.country_holidays(country, subdiv=subdivision or None)
        except NotImplementedError as e:
            raise ValueError(str(e)) from None

    def is_business_day(self, day: date) -> bool:
        return day.weekday() < 5 and day not in self._holidays

    def after(self, start: date, days: int) -> date:
        """The `days`-th business day after `start` (`start` itself not counted)."""
        day = start
        while days > 0:
            day += timedelta(days=1)
            days -= self.is_business_day(day)
        return day

    def before(self, end: date, days: int) -> date:
        """The `days`-th business day before `end` (`end` itself not counted)."""
        day = end
        while days > 0:
            day -= timedelta(days=1)
            days -= self.is_business_day(day)
        return day

    def earliest_effective(self, notice: date, days: int) -> date:
        """The first date a change noticed on `notice` may take effect: `days` business days lie between."""
        return self.after(notice, days) + timedelta(days=1)
