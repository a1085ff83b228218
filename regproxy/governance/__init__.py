"""Dubbo's dynamic governance rules, as Dubbo Admin writes them into the config center: condition
routers, tag routers and configurators (override rules).

Parsing and evaluation are pure here (text in, rule out; rule, URLs and request in, providers or
parameters out); the config-center watchers that feed them live with the registry adapters.
"""
