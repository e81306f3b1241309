"""What anyone may read, whoever asks: the root fields whose answers do not depend on the
viewer, so that an anonymous GET of nothing else may be cached by browsers and CDNs."""

# Root fields answering the same to every viewer, with everything below them: the catalogue
# (Product, Money, its connection) and the subgraph's SDL. `node` is public only for a Product
# ID: an order or a user depends on who asks.
PUBLIC_ROOT_FIELDS = frozenset({"products", "product", "_service", "__typename"})
PUBLIC_NODE_TYPES = frozenset({"Product"})
