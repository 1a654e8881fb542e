"""The node's Prometheus metrics, one definition for every role (names prefixed `websofttt_`).

Worker processes share them through prometheus-client's multiprocess mode: `relay/serve` points
PROMETHEUS_MULTIPROC_DIR at data_dir/metrics before this module is first imported, each process writes
its own file there and the http role sums them at /metrics. Imported only by the serving modules, never
by the CLI, so that the directory is set first. Labels stay bounded: tenant ids, reasons, status codes,
kinds; never addresses. Queue depth and age and the tenants' rates are read at scrape time
(`scrape_collectors`), not kept here.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

received = Counter("websofttt_messages_received", "Messages accepted by submission (250 after DATA).", ["tenant"])
rejected = Counter("websofttt_messages_rejected", "Submission commands refused, by stage and reason.",
                   ["stage", "reason"])
queued = Counter("websofttt_recipients_queued", "Recipients written to the spool.", ["tenant"])
delivered = Counter("websofttt_delivered", "Copies accepted by the next hop.", ["tenant"])
deferred = Counter("websofttt_deferred", "Delivery attempts that will be retried, by enhanced status.",
                   ["tenant", "status"])
bounced = Counter("websofttt_bounced", "Copies that failed for good, by bounce class (hard, soft, policy, other, "
                  "expired).", ["tenant", "class"])
suppression_hits = Counter("websofttt_suppression_hits", "Recipients refused or skipped because they are suppressed.",
                           ["stage", "cause"])
complaints = Counter("websofttt_complaints", "Complaints recorded, by tenant and Feedback-Type.",
                     ["tenant", "feedback_type"])
inbound_messages = Counter("websofttt_inbound_messages", "Messages received by the inbound listener, by kind.",
                           ["kind"])
auth_failures = Counter("websofttt_auth_failures", "Failed or refused SMTP AUTH attempts.", ["reason"])
auth_logins = Counter("websofttt_auth_logins", "Successful SMTP AUTH logins, by how they were checked "
                      "(generated: SHA-256, password: scrypt, remembered: a login this worker verified).", ["check"])
shaping_sent = Counter("websofttt_shaping_sent", "Copies let through to a site with a message rate.", ["site"])
shaping_waits = Counter("websofttt_shaping_waits", "Copies held back because their site's rate was used up.", ["site"])
shaping_throttled = Counter("websofttt_shaping_throttled", "Replies that matched an automation rule (throttling).",
                            ["site"])
shaping_suspensions = Counter("websofttt_shaping_suspensions", "Suspensions of a site by automation.", ["site"])
shaping_rate = Gauge("websofttt_shaping_rate_per_minute", "A site's message rate in force (after reductions).",
                     ["site"], multiprocess_mode="max")
tls_sessions = Counter("websofttt_tls_sessions", "Sessions opened to MX hosts, by policy (sts, tlsa, no-policy-found) "
                       "and TLS result (success or the TLS-RPT result type).", ["policy", "result"])
dkim_signing = Histogram("websofttt_dkim_signing_seconds", "Time to DKIM-sign one copy (all its signatures).",
                         buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1))

# Metrics the http role computes at scrape time (relay/metrics_http.py): name -> help.
SCRAPED = {
    "websofttt_queue_depth": "Recipients waiting in this node's spool (queued or deferred).",
    "websofttt_queue_oldest_age_seconds": "Age of the oldest message with a recipient still waiting.",
    "websofttt_tenant_complaint_rate": "Complaints / deliveries over policy.complaint_window, per tenant.",
    "websofttt_tenant_bounce_rate": "Hard bounces / attempts over policy.complaint_window, per tenant.",
    "websofttt_complaint_rate_limit": "policy.complaint_rate: a tenant above it is suspended.",
    "websofttt_bounce_rate_limit": "policy.bounce_rate: a tenant above it is suspended.",
    "websofttt_tenant_suspended": "1 when the tenant is suspended.",
    "websofttt_cases_open": "Abuse and privacy cases still open (the whole store: every node shows the same).",
    "websofttt_case_oldest_open_age_seconds": "How long the oldest open case has waited (0 when none is open).",
}
