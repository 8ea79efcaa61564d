"""Staged plans: rough -> valley -> fine -> confirm, each stage a Ray Tune experiment of its own.

``format`` reads and checks a plan file; ``state`` is a plan being run (its folder and
``plan.json``); ``runner`` runs the stages in order; ``stages/`` holds one module per kind
of stage; ``select`` chooses configurations from a trials table.
"""
from __future__ import annotations

from search.plans.format import Plan, Stage, builtin_plans, load_plan, parse_plan
from search.plans.runner import run_plan
from search.plans.select import top_configs
from search.plans.stages.confirm import confirm_table
from search.plans.state import PlanRun, least_budget, reopen_plan, start_plan

__all__ = ["Plan", "PlanRun", "Stage", "builtin_plans", "confirm_table", "least_budget", "load_plan", "parse_plan",
           "reopen_plan", "run_plan", "start_plan", "top_configs"]
