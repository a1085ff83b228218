"""The ``health:`` section: active heartbeat checks of upstream hosts, outlier ejection, and the check
of the local application.  The health package (regproxy/health) runs on these models as they are."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from regproxy.config.fields import Float, Int, Model, StrictBool

__all__ = ["ActiveSettings", "AppCheckSettings", "HealthSettings", "OutlierSettings"]

Seconds = Annotated[Float, Field(gt=0)]
Count = Annotated[Int, Field(gt=0, strict=True)]  # strict: 2.5 failures is a mistake, not 2


class ActiveSettings(Model):
    interval_s: Seconds = 5.0
    timeout_s: Seconds = 1.0
    unhealthy_threshold: Count = 3  # consecutive failed heartbeats that make a healthy host unhealthy
    healthy_threshold: Count = 2  # consecutive answered heartbeats that make an unhealthy host healthy
    enabled: StrictBool = True


class OutlierSettings(Model):
    consecutive_failures: Count = 5
    base_ejection_s: Seconds = 10.0  # the n-th ejection in a row lasts n × this ...
    max_ejection_s: Seconds = 300.0  # ... up to this
    max_ejection_percent: Annotated[Float, Field(gt=0, le=100)] = 50.0  # of a cluster's hosts at once
    enabled: StrictBool = True


class AppCheckSettings(Model):
    interval_s: Seconds = 2.0
    timeout_s: Seconds = 1.0
    failures: Count = 2  # consecutive failed heartbeats before the publications are withdrawn
    enabled: StrictBool = True


class HealthSettings(Model):
    active: ActiveSettings = Field(default_factory=ActiveSettings)
    outlier: OutlierSettings = Field(default_factory=OutlierSettings)
    app_check: AppCheckSettings = Field(default_factory=AppCheckSettings)
