"""The etcd v3 gRPC messages the orchestrator sends, built at import time.

etcd answers requests on its JSON gateway as the gateway's own identity, and
refuses client certificates there once authentication is on, so the
orchestrator speaks gRPC, where the client certificate's common name is the
etcd user. Only the messages and fields it uses are declared, with etcd's
field numbers (``api/etcdserverpb/rpc.proto``, ``api/authpb/auth.proto``,
``api/mvccpb/kv.proto``); on the wire only numbers and types count, so the
messages live in a pool of their own and clash with no other etcd client. Enum
fields are plain ``int32`` (the wire form of a proto3 enum).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {
    "bytes": _F.TYPE_BYTES,
    "string": _F.TYPE_STRING,
    "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64,
    "int32": _F.TYPE_INT32,
    "bool": _F.TYPE_BOOL,
}
_PACKAGE = "pke_vsphere.etcd"

# name -> [(field, number, type or message name, repeated, oneof)]
_Fields = list[tuple[str, int, str, bool, str | None]]
_HEADER: _Fields = [("header", 1, "ResponseHeader", False, None)]
_MESSAGES: dict[str, _Fields] = {
    "ResponseHeader": [
        ("cluster_id", 1, "uint64", False, None),
        ("member_id", 2, "uint64", False, None),
        ("revision", 3, "int64", False, None),
        ("raft_term", 4, "uint64", False, None),
    ],
    "KeyValue": [
        ("key", 1, "bytes", False, None),
        ("create_revision", 2, "int64", False, None),
        ("mod_revision", 3, "int64", False, None),
        ("version", 4, "int64", False, None),
        ("value", 5, "bytes", False, None),
        ("lease", 6, "int64", False, None),
    ],
    "RangeRequest": [
        ("key", 1, "bytes", False, None),
        ("range_end", 2, "bytes", False, None),
        ("limit", 3, "int64", False, None),
        ("keys_only", 8, "bool", False, None),
        ("count_only", 9, "bool", False, None),
    ],
    "RangeResponse": [
        *_HEADER,
        ("kvs", 2, "KeyValue", True, None),
        ("more", 3, "bool", False, None),
        ("count", 4, "int64", False, None),
    ],
    "PutRequest": [
        ("key", 1, "bytes", False, None),
        ("value", 2, "bytes", False, None),
        ("lease", 3, "int64", False, None),
    ],
    "PutResponse": _HEADER,
    "DeleteRangeRequest": [("key", 1, "bytes", False, None), ("range_end", 2, "bytes", False, None)],
    "DeleteRangeResponse": [*_HEADER, ("deleted", 2, "int64", False, None)],
    "Compare": [
        ("result", 1, "int32", False, None),  # EQUAL = 0
        ("target", 2, "int32", False, None),  # VERSION 0, CREATE 1, MOD 2, VALUE 3
        ("key", 3, "bytes", False, None),
        ("version", 4, "int64", False, "target_union"),
        ("create_revision", 5, "int64", False, "target_union"),
        ("mod_revision", 6, "int64", False, "target_union"),
        ("value", 7, "bytes", False, "target_union"),
        ("range_end", 64, "bytes", False, None),
    ],
    "RequestOp": [
        ("request_range", 1, "RangeRequest", False, "request"),
        ("request_put", 2, "PutRequest", False, "request"),
        ("request_delete_range", 3, "DeleteRangeRequest", False, "request"),
    ],
    "ResponseOp": [
        ("response_range", 1, "RangeResponse", False, "response"),
        ("response_put", 2, "PutResponse", False, "response"),
        ("response_delete_range", 3, "DeleteRangeResponse", False, "response"),
    ],
    "TxnRequest": [
        ("compare", 1, "Compare", True, None),
        ("success", 2, "RequestOp", True, None),
        ("failure", 3, "RequestOp", True, None),
    ],
    "TxnResponse": [
        *_HEADER,
        ("succeeded", 2, "bool", False, None),
        ("responses", 3, "ResponseOp", True, None),
    ],
    "StatusRequest": [],
    "StatusResponse": [
        *_HEADER,
        ("version", 2, "string", False, None),
        ("db_size", 3, "int64", False, None),
        ("leader", 4, "uint64", False, None),
        ("errors", 8, "string", True, None),
    ],
    "Permission": [
        ("perm_type", 1, "int32", False, None),  # READ 0, WRITE 1, READWRITE 2
        ("key", 2, "bytes", False, None),
        ("range_end", 3, "bytes", False, None),
    ],
    "UserAddOptions": [("no_password", 1, "bool", False, None)],
    "AuthUserAddRequest": [
        ("name", 1, "string", False, None),
        ("password", 2, "string", False, None),
        ("options", 3, "UserAddOptions", False, None),
    ],
    "AuthRoleAddRequest": [("name", 1, "string", False, None)],
    "AuthRoleGrantPermissionRequest": [
        ("name", 1, "string", False, None),
        ("perm", 2, "Permission", False, None),
    ],
    "AuthUserGrantRoleRequest": [("user", 1, "string", False, None), ("role", 2, "string", False, None)],
    "AuthUserDeleteRequest": [("name", 1, "string", False, None)],
    "AuthRoleDeleteRequest": [("role", 1, "string", False, None)],
    "AuthUserGetRequest": [("name", 1, "string", False, None)],
    "AuthUserGetResponse": [*_HEADER, ("roles", 2, "string", True, None)],
    "AuthRoleGetRequest": [("role", 1, "string", False, None)],
    "AuthRoleGetResponse": [*_HEADER, ("perm", 2, "Permission", True, None)],
    "AuthEnableRequest": [],
    "HeaderOnly": _HEADER,
}

# method path -> (request, response)
METHODS = {
    "/etcdserverpb.KV/Range": ("RangeRequest", "RangeResponse"),
    "/etcdserverpb.KV/Put": ("PutRequest", "PutResponse"),
    "/etcdserverpb.KV/DeleteRange": ("DeleteRangeRequest", "DeleteRangeResponse"),
    "/etcdserverpb.KV/Txn": ("TxnRequest", "TxnResponse"),
    "/etcdserverpb.Maintenance/Status": ("StatusRequest", "StatusResponse"),
    "/etcdserverpb.Auth/UserAdd": ("AuthUserAddRequest", "HeaderOnly"),
    "/etcdserverpb.Auth/RoleAdd": ("AuthRoleAddRequest", "HeaderOnly"),
    "/etcdserverpb.Auth/RoleGrantPermission": ("AuthRoleGrantPermissionRequest", "HeaderOnly"),
    "/etcdserverpb.Auth/UserGrantRole": ("AuthUserGrantRoleRequest", "HeaderOnly"),
    "/etcdserverpb.Auth/UserDelete": ("AuthUserDeleteRequest", "HeaderOnly"),
    "/etcdserverpb.Auth/RoleDelete": ("AuthRoleDeleteRequest", "HeaderOnly"),
    "/etcdserverpb.Auth/UserGet": ("AuthUserGetRequest", "AuthUserGetResponse"),
    "/etcdserverpb.Auth/RoleGet": ("AuthRoleGetRequest", "AuthRoleGetResponse"),
    "/etcdserverpb.Auth/AuthEnable": ("AuthEnableRequest", "HeaderOnly"),
}

# Compare and Permission values.
EQUAL = 0
CREATE, VALUE = 1, 3
READWRITE = 2


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="pke_vsphere_etcd.proto", package=_PACKAGE, syntax="proto3"
    )
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        oneofs: list[str] = []
        for field, number, kind, repeated, oneof in fields:
            proto = message.field.add(
                name=field,
                number=number,
                label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
            )
            if kind in _TYPES:
                proto.type = _TYPES[kind]
            else:
                proto.type = _F.TYPE_MESSAGE
                proto.type_name = f".{_PACKAGE}.{kind}"
            if oneof is not None:
                if oneof not in oneofs:
                    oneofs.append(oneof)
                    message.oneof_decl.add(name=oneof)
                proto.oneof_index = oneofs.index(oneof)
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
_CLASSES: dict[str, Any] = {
    name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
    for name in _MESSAGES
}


def message(type_name: str, /, **fields: Any) -> Any:
    """A new message of one of the types above."""
    return _CLASSES[type_name](**fields)


def message_class(name: str) -> Any:
    return _CLASSES[name]
