"""federation-redirect: the front door of a federation of BinderHubs.

Health-checks each member BinderHub, weights traffic by capacity, hashes each repository
stickily to one member and answers launches with an HTTP redirect.
"""

__version__ = "0.1.0"
