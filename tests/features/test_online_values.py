"""Decoding Feast's stored Value protos (what OnlineFeatures reads from the online store)."""

import numpy as np
from feast.protos.feast.types.Value_pb2 import FloatList, Int64List, Null, Value

from llmfeat.features.online import python_value


def test_python_value_decodes_each_kind():
    vec = python_value(Value(float_list_val=FloatList(val=[0.5, -1.25, 3.0])))
    assert vec.dtype == np.float32 and vec.tolist() == [0.5, -1.25, 3.0]
    assert python_value(Value(int64_list_val=Int64List(val=[7, 8]))).tolist() == [7, 8]
    assert python_value(Value(string_val="all-MiniLM-L6-v2@abc")) == "all-MiniLM-L6-v2@abc"
    assert python_value(Value(int32_val=12)) == 12


def test_missing_and_null_values_are_none():
    assert python_value(None) is None  # no row for the entity
    assert python_value(Value()) is None  # a row, but the feature was never set
    assert python_value(Value(null_val=Null.NULL)) is None
