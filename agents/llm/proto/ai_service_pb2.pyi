import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Request(_message.Message):
    __slots__ = ("user_id", "session_id", "chat_message", "model_name", "session_prompt", "file_name", "chat_summary", "chat_history", "balance", "timestamp", "model_provider")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHAT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SESSION_PROMPT_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    CHAT_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    CHAT_HISTORY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    MODEL_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_id: str
    chat_message: str
    model_name: str
    session_prompt: str
    file_name: _containers.RepeatedScalarFieldContainer[str]
    chat_summary: str
    chat_history: str
    balance: float
    timestamp: _timestamp_pb2.Timestamp
    model_provider: str
    def __init__(self, user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., chat_message: _Optional[str] = ..., model_name: _Optional[str] = ..., session_prompt: _Optional[str] = ..., file_name: _Optional[_Iterable[str]] = ..., chat_summary: _Optional[str] = ..., chat_history: _Optional[str] = ..., balance: _Optional[float] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_provider: _Optional[str] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("response_text", "cost", "timestamp")
    RESPONSE_TEXT_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    response_text: str
    cost: float
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, response_text: _Optional[str] = ..., cost: _Optional[float] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
