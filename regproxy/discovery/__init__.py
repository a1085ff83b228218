"""Discovery: publications and subscriptions carried out on the registries, and the routing tables
kept in step with what the registries report.

One module per concern; the coordinator ties them together and is the only one that holds a
registry or swaps a table:

* ``desired``: the desired state as kept (PublishSpec, Publication, SubscriptionState, NotFound);
* ``tables``: pure table building (ingress table, a subscription's hosts, the egress table);
* ``persistence``: the state file (snapshot, provider cache, restore checks, coalesced saves);
* ``screen``: which provider URLs may be routed to (validity, this sidecar's own addresses);
* ``protection``: empty-provider protection, one policy for every registry;
* ``coordinator``: Discovery, which owns the registries and the event flow;
* ``views``: what the admin API shows of a subscription, worked out from Discovery's state.

Imports go one way: screen and protection import nothing of discovery at run time; desired imports
protection (the Hold type); tables imports desired; persistence imports desired and screen; the
coordinator imports them all. Nothing here imports the coordinator but this file (and views, for
its type only).
"""

from __future__ import annotations

from regproxy.discovery.coordinator import Discovery
from regproxy.discovery.desired import NotFound, PublishSpec
from regproxy.discovery.screen import own_addresses
from regproxy.discovery.tables import ingress_table

__all__ = ["Discovery", "NotFound", "PublishSpec", "ingress_table", "own_addresses"]
