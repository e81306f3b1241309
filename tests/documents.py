"""GraphQL documents that several test modules send, written once."""

ENTITIES = """
query Entities($representations: [_Any!]!) {
  _entities(representations: $representations) {
    __typename
    ... on Product { id name price { amount currency } }
    ... on Order { id status total { amount } items { quantity product { id name } } }
    ... on User { id email }
  }
}
"""

CANCEL_ORDER = """
mutation Cancel($id: ID!) {
  cancelOrder(id: $id) {
    __typename
    ... on UserError { message }
    ... on CancelOrderSuccess { order { id status } }
  }
}
"""

RELEASE = """
mutation Release($id: ID!) {
  releaseReservation(id: $id) {
    __typename
    ... on UserError { message }
    ... on ReleaseReservationSuccess { reservation { id status } }
  }
}
"""
