"""Predefined schemas: ``cad_basic``, ``cad_advanced``, ``manufacturing_basic``, ``sensor_basic``.

The CAD templates carry the keys, dims and dtypes the vendor's ``BrepEncoder`` writes (as of
hoops-ai 1.1), so a store written with them merges like a vendor store. The vendor publishes
only the group names of each template; the arrays of the manufacturing and sensor templates
and of the ``metadata`` / ``performance`` groups are our own choice.

Templates are plain canonical schema dicts (the ``SchemaBuilder.build()`` form), so this
module needs no builder and the builder can import it.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Final

from cadstore.errors import SchemaError
from cadstore.schema._common import default_routing_rules

__all__ = ["SchemaTemplates"]


def _array(dims: list[str], dtype: str, description: str) -> dict[str, Any]:
    return {"dims": dims, "dtype": dtype, "description": description}


def _group(
    primary: str,
    description: str,
    arrays: dict[str, dict[str, Any]],
    special_processing: str | None = None,
) -> dict[str, Any]:
    group: dict[str, Any] = {
        "primary_dimension": primary,
        "arrays": arrays,
        "description": description,
    }
    if special_processing is not None:
        group["special_processing"] = special_processing
    return group


def _faces(advanced: bool) -> dict[str, Any]:
    arrays = {
        "face_indices": _array(["face"], "int32", "Index of each face"),
        "face_areas": _array(["face"], "float32", "Surface area of each face"),
        "face_types": _array(["face"], "int32", "Surface type code (0 Plane, 1 Cylinder, ...)"),
        "face_loops": _array(["face"], "int32", "Number of loops bounding each face"),
        "face_centroids": _array(["face", "dim"], "float32", "Centroid (x, y, z) of each face"),
        "face_discretization": _array(
            ["face", "sample", "component"],
            "float32",
            "Points sampled on each face: xyz, normal, inside flag",
        ),
    }
    if advanced:
        arrays["face_neighborscount"] = _array(["face"], "int32", "Number of adjacent faces")
        arrays["face_uv_grids"] = _array(
            ["face", "uv_x", "uv_y", "component"],
            "float32",
            "UV grid samples of each face: xyz, normal, inside flag",
        )
    return _group("face", "Face attributes of the B-rep", arrays)


def _edges() -> dict[str, Any]:
    return _group(
        "edge",
        "Co-edge attributes of the B-rep",
        {
            "edge_indices": _array(["edge"], "int32", "Index of each co-edge"),
            "edge_lengths": _array(["edge"], "float32", "Length of each edge"),
            "edge_types": _array(["edge"], "int32", "Curve type code (0 Line, 1 Circle, ...)"),
            "edge_dihedral_angles": _array(
                ["edge"],
                "float32",
                "Signed dihedral angle across each edge, radians: + convex, - concave, 0 smooth",
            ),
            "edge_convexities": _array(
                ["edge"], "int32", "Convexity code of each edge: 1 convex, 2 concave, 3 smooth"
            ),
            "edge_u_grids": _array(
                ["edge", "u", "component"], "float32", "Points sampled on each edge: xyz, tangent"
            ),
        },
    )


def _graph() -> dict[str, Any]:
    return _group(
        "edge",
        "Face adjacency graph, one graph edge per co-edge",
        {
            "edges_source": _array(["edge"], "int32", "Source face of each graph edge"),
            "edges_destination": _array(["edge"], "int32", "Destination face of each graph edge"),
            # The vendor repeats the node count once per graph edge; we keep that layout.
            "num_nodes": _array(["edge"], "int32", "Number of graph nodes (faces) of the item"),
        },
    )


def _faceface() -> dict[str, Any]:
    return _group(
        "facepair",
        "Face-pair arrays, (N_f, N_f, k) per item flattened to N_f**2 rows",
        {
            "extended_adjacency": _array(
                ["facepair"], "float32", "Shortest-path hop count between the two faces"
            ),
            "face_pair_edges_path": _array(
                ["facepair", "dim_path"], "int32", "Edge ids on the shortest path, -1 padded"
            ),
            "a3_distance": _array(
                ["facepair", "bin"], "float32", "Histogram of normal angles / pi (A3)"
            ),
            "d2_distance": _array(
                ["facepair", "bin"], "float32", "Histogram of distances / bbox diagonal (D2)"
            ),
        },
        special_processing="matrix_flattening",
    )


def _metadata(
    file_level: dict[str, Any] | None = None, categorical: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "file_level": file_level or {},
            "categorical": categorical or {},
            "routing_rules": default_routing_rules(),
        }
    }


def _file_field(dtype: str, description: str) -> dict[str, Any]:
    return {"dtype": dtype, "description": description, "required": False}


def _cad_metadata() -> dict[str, Any]:
    return _metadata(
        file_level={
            "size_cadfile": _file_field("int64", "Size of the CAD file in bytes"),
            "processing_time": _file_field("float32", "Encoding time in seconds"),
        },
        categorical={
            "file_label": {
                "dtype": "int32",
                "required": False,
                "description": "Classification label of the part",
            }
        },
    )


def _schema(
    domain: str, description: str, groups: dict[str, Any], metadata: dict[str, Any]
) -> dict[str, Any]:
    return {
        "version": "1.0",
        "domain": domain,
        "groups": groups,
        "description": description,
        "metadata": metadata,
    }


_CAD_BASIC: Final = _schema(
    "CAD_analysis",
    "Basic CAD analysis with faces, edges and graph data",
    {
        "faces": _faces(advanced=False),
        "edges": _edges(),
        "graph": _graph(),
        "metadata": _group(
            "file",
            "Per-file scalars, one row per item",
            {
                "num_faces": _array(["file"], "int32", "Number of faces of the item"),
                "num_edges": _array(["file"], "int32", "Number of co-edges of the item"),
            },
        ),
    },
    _cad_metadata(),
)

_CAD_ADVANCED: Final = _schema(
    "CAD_analysis",
    "Advanced CAD analysis including surface properties and relationships",
    {
        "faces": _faces(advanced=True),
        "edges": _edges(),
        "faceface": _faceface(),
        "graph": _graph(),
        "performance": _group(
            "file",
            "Per-file encoding performance, one row per item",
            {
                "encode_time": _array(["file"], "float32", "Encoding time in seconds"),
                "peak_memory_mb": _array(["file"], "float32", "Peak memory while encoding, MB"),
            },
        ),
    },
    _cad_metadata(),
)

_MANUFACTURING_BASIC: Final = _schema(
    "manufacturing_data",
    "Manufacturing data with quality metrics",
    {
        "production": _group(
            "part",
            "One row per produced part",
            {
                "part_id": _array(["part"], "int64", "Identifier of the part"),
                "quality_score": {
                    **_array(["part"], "float32", "Quality score between 0 and 1"),
                    "min_value": 0.0,
                    "max_value": 1.0,
                },
                "production_time": _array(["part"], "float32", "Production time in seconds"),
                "defect_count": _array(["part"], "int32", "Number of defects found"),
            },
        ),
        "sensors": _group(
            "reading",
            "Process sensor readings",
            {
                "temperature": _array(["reading"], "float32", "Temperature in degrees Celsius"),
                "pressure": _array(["reading"], "float32", "Pressure in bar"),
                "vibration": _array(["reading"], "float32", "Vibration amplitude in mm/s"),
            },
        ),
        "materials": _group(
            "material",
            "Materials used",
            {
                "material_code": _array(["material"], "int32", "Material code"),
                "density": _array(["material"], "float32", "Density in kg/m^3"),
                "composition": _array(
                    ["material", "element"], "float32", "Mass fraction of each element"
                ),
            },
        ),
    },
    _metadata(
        categorical={
            "machining_category": {
                "dtype": "int32",
                "required": False,
                "description": "Machining complexity classification",
                "values": [1, 2, 3, 4, 5],
                "labels": ["Simple", "Easy", "Medium", "Hard", "Complex"],
            }
        }
    ),
)

_SENSOR_BASIC: Final = _schema(
    "sensor_data",
    "Sensor data with timestamps and readings",
    {
        "timeseries": _group(
            "time",
            "Time-stamped readings",
            {
                "timestamp": _array(["time"], "float64", "Seconds since the Unix epoch"),
                "value": _array(["time"], "float32", "Reading"),
                "sensor_index": _array(["time"], "int32", "Index of the sensor that read it"),
            },
        ),
        "sensors": _group(
            "sensor",
            "Sensor descriptions",
            {
                "sensor_id": _array(["sensor"], "int32", "Identifier of the sensor"),
                "sensor_type": _array(["sensor"], "int32", "Sensor type code"),
                "location": _array(["sensor", "coordinate"], "float32", "Position (x, y, z)"),
            },
        ),
        "events": _group(
            "event",
            "Discrete events",
            {
                "event_time": _array(["event"], "float64", "Seconds since the Unix epoch"),
                "event_type": _array(["event"], "int32", "Event type code"),
                "severity": _array(["event"], "int32", "Severity, higher is worse"),
            },
        ),
    },
    _metadata(),
)


class SchemaTemplates:
    """The catalogue of predefined schemas.

    Use ``SchemaBuilder().from_template(name)`` or ``SchemaBuilder().extend_template(name)``
    to start from one; this class only lists and describes them.

    Examples
    --------
    >>> SchemaTemplates.list_templates()
    ['cad_basic', 'cad_advanced', 'manufacturing_basic', 'sensor_basic']
    >>> SchemaTemplates.get_template_description("cad_advanced")
    'Advanced CAD analysis including surface properties and relationships'
    """

    _TEMPLATES: ClassVar[dict[str, dict[str, Any]]] = {
        "cad_basic": _CAD_BASIC,
        "cad_advanced": _CAD_ADVANCED,
        "manufacturing_basic": _MANUFACTURING_BASIC,
        "sensor_basic": _SENSOR_BASIC,
    }

    @classmethod
    def list_templates(cls) -> list[str]:
        """Return the template names.

        Returns
        -------
        list of str
            ``['cad_basic', 'cad_advanced', 'manufacturing_basic', 'sensor_basic']``.
        """
        return list(cls._TEMPLATES)

    @classmethod
    def _lookup(cls, name: str) -> dict[str, Any]:
        try:
            return cls._TEMPLATES[name]
        except (KeyError, TypeError):
            raise SchemaError(
                f"template: unknown template {name!r}; "
                f"available templates are {', '.join(cls._TEMPLATES)}"
            ) from None

    @classmethod
    def get_template_description(cls, name: str) -> str:
        """Return the one-line description of template *name*.

        Parameters
        ----------
        name
            A name from :meth:`list_templates`.

        Returns
        -------
        str
            The description.

        Raises
        ------
        SchemaError
            If there is no such template.
        """
        return str(cls._lookup(name)["description"])

    @classmethod
    def get_template(cls, name: str) -> dict[str, Any]:
        """Return template *name* as a fresh schema dict in the ``build()`` form.

        Parameters
        ----------
        name
            A name from :meth:`list_templates`.

        Returns
        -------
        dict
            A deep copy; changing it does not change the template.

        Raises
        ------
        SchemaError
            If there is no such template.
        """
        return copy.deepcopy(cls._lookup(name))
