"""The shared service registry: members, gateways, services, keys and grants, published as one signed snapshot."""
