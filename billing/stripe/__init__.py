"""Stripe sync: push finalized Meterline invoices to Stripe exactly once.

``schema`` holds the state tables, ``client`` the thin SDK wrapper, ``sync`` the
step-by-step, resumable push, ``status`` the pull of Stripe's invoice status.
"""
