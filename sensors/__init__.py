"""Sensors: what makes the graph move by itself."""

from sensors.automation import automation_sensor
from sensors.eval_sensors import checkpoint_eval_sensor, eval_regression_sensor, run_failure_sensor
from sensors.retraining import mixture_retraining_sensor
from sensors.shard_sensor import shard_sensor

ALL_SENSORS = [shard_sensor, automation_sensor, mixture_retraining_sensor, checkpoint_eval_sensor,
               eval_regression_sensor, run_failure_sensor]
