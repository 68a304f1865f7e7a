"""Wire formats: every request, response, stream chunk, error and DHT record LlamaNet exchanges.

Pydantic models only, no logic beyond field validation. The OpenAI models follow the OpenAI API
so the official SDK works unchanged; the native models (`StreamingRequest`, `StreamingChunk`,
`GenerateResponse`) come from the original streaming plan; `NodeRecord` is what a node publishes
in the DHT.

Import every name from here (`from llamanet.protocol import ChatCompletionRequest`): the private
modules are the layout, not the API, and may move. One concept each, and they depend one way,
from the shared pieces up to the formats built of them (`make lint` checks it):

    _common       base classes, shared validators and types, NODE_HEADER, new_id
    _errors       the OpenAI error body; the error codes of validation errors
    _resume       the internal `llamanet` request field: stream resumption between nodes
    _sampling     sampling fields and limits shared by every generation request
    _tools        function tools, tool calls, tool_choice
    _structured   response_format: JSON mode and JSON schemas
    _logprobs     chat and legacy-completion logprobs
    _chat         chat completions: messages, the request, the answer, the stream chunks
    _completions  legacy completions
    _embeddings   embeddings
    _responses    the Responses API: request, Response object, stream events
    _models       the model list (`GET /v1/models`)
    _native       the native API (`/generate`, `/generate/stream`)
    _swarm        node state: NodeRecord (the DHT record), `/status`, `/info`, `/nodes`
"""

from llamanet.protocol._chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatFinishReason,
    ChatMessage,
    ChatResponseMessage,
    ChoiceFields,
    TextContentPart,
    ToolCallDelta,
    ToolCallDeltaFunction,
    check_tool_results,
)
from llamanet.protocol._common import (
    NODE_HEADER,
    FinishReason,
    FunctionName,
    Number,
    StreamOptions,
    Unsupported,
    Usage,
    new_id,
)
from llamanet.protocol._completions import Completion, CompletionChoice, CompletionRequest, Prompt
from llamanet.protocol._embeddings import (
    MAX_EMBEDDING_INPUTS,
    MAX_TOKEN_ID,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
)
from llamanet.protocol._errors import VALIDATION_CODES, ErrorDetail, ErrorResponse, validation_code
from llamanet.protocol._logprobs import (
    MAX_COMPLETION_LOGPROBS,
    MAX_TOP_LOGPROBS,
    ChatLogprobs,
    ChatTokenLogprob,
    ChatTopLogprob,
    CompletionLogprobs,
)
from llamanet.protocol._models import ModelCard, ModelList
from llamanet.protocol._native import (
    GenerateResponse,
    NativeChoice,
    StreamingChunk,
    StreamingRequest,
)
from llamanet.protocol._responses import (
    ItemStatus,
    ResponseArgumentsDeltaEvent,
    ResponseArgumentsDoneEvent,
    ResponseContentPartEvent,
    ResponseErrorEvent,
    ResponseErrorInfo,
    ResponseFunctionCall,
    ResponseIncompleteDetails,
    ResponseInputTokensDetails,
    ResponseLifecycleEvent,
    ResponseObject,
    ResponseOutputItem,
    ResponseOutputItemEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseOutputTokensDetails,
    ResponsesContent,
    ResponsesFunctionTool,
    ResponsesInputItem,
    ResponsesNamedToolChoice,
    ResponsesRequest,
    ResponsesTextConfig,
    ResponsesTextFormat,
    ResponsesTextPart,
    ResponsesTokenLogprob,
    ResponsesTopLogprob,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
    new_item_id,
)
from llamanet.protocol._resume import MAX_RESUME_TOKENS, ResumeFrom, StreamControl
from llamanet.protocol._sampling import (
    MAX_LOGIT_BIAS,
    MAX_N,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    MAX_TOKENS_LIMIT,
    LogitBias,
    MaxTokens,
    Penalty,
    SamplingFields,
    Temperature,
    TopP,
)
from llamanet.protocol._structured import JSONSchemaFormat, ResponseFormat
from llamanet.protocol._swarm import ModelInfo, NodeInfo, NodeList, NodeRecord, NodeStatus
from llamanet.protocol._tools import (
    MAX_TOOLS,
    ChatTool,
    ChatToolChoice,
    FunctionDefinition,
    NamedFunction,
    NamedToolChoice,
    ToolCall,
    ToolCallFunction,
    ToolChoiceMode,
    check_tool_choice,
    check_tool_names,
)

__all__ = [
    "MAX_COMPLETION_LOGPROBS",
    "MAX_EMBEDDING_INPUTS",
    "MAX_LOGIT_BIAS",
    "MAX_N",
    "MAX_RESUME_TOKENS",
    "MAX_STOP_LENGTH",
    "MAX_STOP_SEQUENCES",
    "MAX_TOKENS_LIMIT",
    "MAX_TOKEN_ID",
    "MAX_TOOLS",
    "MAX_TOP_LOGPROBS",
    "NODE_HEADER",
    "VALIDATION_CODES",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatDelta",
    "ChatFinishReason",
    "ChatLogprobs",
    "ChatMessage",
    "ChatResponseMessage",
    "ChatTokenLogprob",
    "ChatTool",
    "ChatToolChoice",
    "ChatTopLogprob",
    "ChoiceFields",
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "Embedding",
    "EmbeddingList",
    "EmbeddingRequest",
    "EmbeddingUsage",
    "ErrorDetail",
    "ErrorResponse",
    "FinishReason",
    "FunctionDefinition",
    "FunctionName",
    "GenerateResponse",
    "ItemStatus",
    "JSONSchemaFormat",
    "LogitBias",
    "MaxTokens",
    "ModelCard",
    "ModelInfo",
    "ModelList",
    "NamedFunction",
    "NamedToolChoice",
    "NativeChoice",
    "NodeInfo",
    "NodeList",
    "NodeRecord",
    "NodeStatus",
    "Number",
    "Penalty",
    "Prompt",
    "ResponseArgumentsDeltaEvent",
    "ResponseArgumentsDoneEvent",
    "ResponseContentPartEvent",
    "ResponseErrorEvent",
    "ResponseErrorInfo",
    "ResponseFormat",
    "ResponseFunctionCall",
    "ResponseIncompleteDetails",
    "ResponseInputTokensDetails",
    "ResponseLifecycleEvent",
    "ResponseObject",
    "ResponseOutputItem",
    "ResponseOutputItemEvent",
    "ResponseOutputMessage",
    "ResponseOutputText",
    "ResponseOutputTokensDetails",
    "ResponseStreamEvent",
    "ResponseTextDeltaEvent",
    "ResponseTextDoneEvent",
    "ResponseUsage",
    "ResponsesContent",
    "ResponsesFunctionTool",
    "ResponsesInputItem",
    "ResponsesNamedToolChoice",
    "ResponsesRequest",
    "ResponsesTextConfig",
    "ResponsesTextFormat",
    "ResponsesTextPart",
    "ResponsesTokenLogprob",
    "ResponsesTopLogprob",
    "ResumeFrom",
    "SamplingFields",
    "StreamControl",
    "StreamOptions",
    "StreamingChunk",
    "StreamingRequest",
    "Temperature",
    "TextContentPart",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallDeltaFunction",
    "ToolCallFunction",
    "ToolChoiceMode",
    "TopP",
    "Unsupported",
    "Usage",
    "check_tool_choice",
    "check_tool_names",
    "check_tool_results",
    "new_id",
    "new_item_id",
    "validation_code",
]
