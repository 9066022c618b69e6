"""What the MLIR form of XLA's optimized module loses, read back from the module's own proto.

``hlo_to_stablehlo`` turns a cuDNN convolution into ``custom_call @__cudnn$conv...(x, w)`` and drops its
window and dimension numbers, which are needed to count its flops. The serialized ``HloModuleProto`` still
has them. We declare only the handful of fields we read (``xla/service/hlo.proto``, ``xla/xla_data.proto``;
numbers from the public schema) and let protobuf skip the rest, so no XLA schema file is needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# (message, [(field name, number, type, repeated, message type)])
_INT64, _STRING, _MESSAGE = 3, 9, 11   # FieldDescriptorProto.Type values
_SCHEMA = {
    "WindowDimension": [("size", 1, _INT64, False, None), ("stride", 2, _INT64, False, None),
                        ("padding_low", 3, _INT64, False, None), ("padding_high", 4, _INT64, False, None),
                        ("window_dilation", 5, _INT64, False, None), ("base_dilation", 6, _INT64, False, None)],
    "Window": [("dimensions", 1, _MESSAGE, True, "WindowDimension")],
    "ConvolutionDimensionNumbers": [
        ("kernel_input_feature_dimension", 3, _INT64, False, None),
        ("kernel_output_feature_dimension", 4, _INT64, False, None),
        ("kernel_spatial_dimensions", 6, _INT64, True, None),
        ("input_batch_dimension", 7, _INT64, False, None), ("input_feature_dimension", 8, _INT64, False, None),
        ("output_batch_dimension", 9, _INT64, False, None), ("output_feature_dimension", 10, _INT64, False, None),
        ("input_spatial_dimensions", 11, _INT64, True, None), ("output_spatial_dimensions", 12, _INT64, True, None)],
    "ShapeProto": [("dimensions", 3, _INT64, True, None), ("tuple_shapes", 4, _MESSAGE, True, "ShapeProto")],
    "OpMetadata": [("op_name", 2, _STRING, False, None)],
    "HloInstructionProto": [
        ("name", 1, _STRING, False, None), ("opcode", 2, _STRING, False, None),
        ("shape", 3, _MESSAGE, False, "ShapeProto"), ("metadata", 7, _MESSAGE, False, "OpMetadata"),
        ("window", 15, _MESSAGE, False, "Window"),
        ("convolution_dimension_numbers", 16, _MESSAGE, False, "ConvolutionDimensionNumbers"),
        ("custom_call_target", 28, _STRING, False, None), ("feature_group_count", 50, _INT64, False, None),
        ("batch_group_count", 58, _INT64, False, None)],
    "HloComputationProto": [("name", 1, _STRING, False, None),
                            ("instructions", 2, _MESSAGE, True, "HloInstructionProto")],
    # which entry parameters an output may write into (the caller donated them): input_output_alias
    "AliasEntryProto": [("output_shape_index", 1, _INT64, True, None), ("parameter_number", 2, _INT64, False, None),
                        ("parameter_shape_index", 3, _INT64, True, None)],
    "HloInputOutputAliasProto": [("entries", 1, _MESSAGE, True, "AliasEntryProto")],
    "HloModuleProto": [("name", 1, _STRING, False, None),
                       ("computations", 3, _MESSAGE, True, "HloComputationProto"),
                       ("input_output_alias", 8, _MESSAGE, False, "HloInputOutputAliasProto")],
}
_PACKAGE = "explorer_hlo_subset"
_module_class: Any = None


def _module_message() -> Any:
    global _module_class
    if _module_class is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # third-party (flax needs it)

        file = descriptor_pb2.FileDescriptorProto(name=f"{_PACKAGE}.proto", package=_PACKAGE, syntax="proto3")
        for message, fields in _SCHEMA.items():
            m = file.message_type.add(name=message)
            for name, number, kind, repeated, type_name in fields:
                f = m.field.add(name=name, number=number, type=kind,
                                label=3 if repeated else 1)          # LABEL_REPEATED / LABEL_OPTIONAL
                if type_name:
                    f.type_name = f".{_PACKAGE}.{type_name}"
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file)
        _module_class = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.HloModuleProto"))
    return _module_class


def parse(serialized_module: bytes) -> Any:
    """The serialized ``HloModuleProto`` read into the fields declared above (parsed once, read by both below)."""
    module = _module_message()()
    module.ParseFromString(serialized_module)
    return module


def aliased_parameters(module: Any) -> dict[int, tuple[int, ...]]:
    """Entry parameter number -> the output (tuple index) XLA lets write into its buffer: the donated ones."""
    return {int(e.parameter_number): tuple(int(i) for i in e.output_shape_index)
            for e in module.input_output_alias.entries}


@dataclass(frozen=True)
class Convolution:
    """One convolution's geometry, in the terms of ``stablehlo.convolution``'s attributes."""

    op_name: str                      # JAX name stack from the metadata (what the MLIR location carries)
    target: str                       # custom-call target (``__cudnn$convForward``, ...)
    result_shape: tuple[int, ...]     # first result (the cuDNN call also returns a scratch buffer)
    dimension_numbers: dict[str, Any]
    window_strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]
    feature_group_count: int
    batch_group_count: int


def convolutions(module: Any) -> list[Convolution]:
    """Every convolution custom call in the module (``parse``; any computation), with its window and dimension
    numbers."""
    out = []
    for comp in module.computations:
        for inst in comp.instructions:
            if inst.opcode != "custom-call" or not inst.HasField("convolution_dimension_numbers"):
                continue
            dn = inst.convolution_dimension_numbers
            dims = list(inst.window.dimensions)
            shape = tuple((inst.shape.tuple_shapes[0] if inst.shape.tuple_shapes else inst.shape).dimensions)
            out.append(Convolution(
                op_name=inst.metadata.op_name, target=inst.custom_call_target, result_shape=shape,
                dimension_numbers={
                    "input_batch": dn.input_batch_dimension, "input_feature": dn.input_feature_dimension,
                    "input_spatial": tuple(dn.input_spatial_dimensions),
                    "kernel_in": dn.kernel_input_feature_dimension, "kernel_out": dn.kernel_output_feature_dimension,
                    "kernel_spatial": tuple(dn.kernel_spatial_dimensions),
                    "output_batch": dn.output_batch_dimension, "output_feature": dn.output_feature_dimension,
                    "output_spatial": tuple(dn.output_spatial_dimensions)},
                window_strides=tuple(d.stride or 1 for d in dims),
                padding=tuple((d.padding_low, d.padding_high) for d in dims),
                lhs_dilation=tuple(d.base_dilation or 1 for d in dims),
                rhs_dilation=tuple(d.window_dilation or 1 for d in dims),
                feature_group_count=inst.feature_group_count or 1, batch_group_count=inst.batch_group_count or 1))
    return out
