"""Writes sample_data/numbers.parquet (numbers stored as integers, as exports do)."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

rows = {
    "phoneNumber": [2125550161, 2125550162, 2125550163, 6465550170, 7185550181,
                    3475550199, 2125550161, 999, 9175550150, 9175550151],
    "applicationId": [134, 134, 134, 134, 134, 134, 134, 134, 134, 134],
    "campaignName": ["Campaign1"] * 10,
    "callingList": ["CallingList1"] * 8 + ["CallingList2"] * 2,
}
pq.write_table(pa.table(rows), Path(__file__).with_name("numbers.parquet"))
