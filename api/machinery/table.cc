#include "api/machinery/table.h"

#include "api/machinery/codec.h"
#include "api/machinery/meta.h"

namespace edgevirt::api::machinery {
namespace {

// metav1.ObjectMeta{}.SwaggerDoc()["name"], as the CRD table convertor describes Name.
constexpr char kNameDescription[] =
    "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
constexpr char kAgeDescription[] =
    "Custom resource definition column (in JSONPath format): .metadata.creationTimestamp";

nlohmann::ordered_json Column(const std::string& name, const std::string& type,
                              const std::string& format, const std::string& description,
                              int priority) {
  nlohmann::ordered_json c = nlohmann::ordered_json::object();
  c["name"] = name;
  c["type"] = type;
  c["format"] = format;
  c["description"] = description;
  c["priority"] = priority;
  return c;
}

// cellForJSONValue / jsonpath printing of the CRD convertor.
Json Cell(const TableColumn& col, const Json& value, WallClock::time_point now) {
  if (value.is_null()) return nullptr;
  if (col.type == "date") {
    if (value.is_string()) return HumanAge(value.get_ref<const std::string&>(), now);
    return nullptr;
  }
  if (col.type == "string") {
    if (value.is_string()) return value;
    return Dump(value);  // jsonpath prints numbers, booleans and objects as JSON text
  }
  if (col.type == "integer") {
    if (value.is_number()) return value.get<int64_t>();
    return nullptr;
  }
  if (col.type == "number") {
    if (value.is_number()) return value.get<double>();
    return nullptr;
  }
  if (col.type == "boolean") {
    if (value.is_boolean()) return value;
    return nullptr;
  }
  return value;
}

const Json* Metadata(const Json& object) {
  auto it = object.find("metadata");
  return it == object.end() || !it->is_object() ? nullptr : &*it;
}

}  // namespace

std::string ColumnDefinitionsJson(const ResourceType& rt) {
  // metav1.TableColumnDefinition field order: name, type, format, description, priority.
  nlohmann::ordered_json cols = nlohmann::ordered_json::array();
  if (rt.default_columns) {
    cols.push_back(Column("Name", "string", "name", kNameDescription, 0));
    cols.push_back(Column("Age", "date", "", kAgeDescription, 0));
  }
  for (const auto& c : rt.columns) {
    cols.push_back(Column(c.name, c.type, c.format, c.description, c.priority));
  }
  return cols.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

Json ColumnDefinitions(const ResourceType& rt) { return Json::parse(ColumnDefinitionsJson(rt)); }

Json TableRow(const ResourceType& rt, const Json& object, const TableOptions& options,
              WallClock::time_point now) {
  Json cells = Json::array();
  const Json* meta = Metadata(object);
  if (rt.default_columns) {
    std::string name, created;
    if (meta) {
      name = meta->value("name", "");
      auto ct = meta->find("creationTimestamp");
      if (ct != meta->end() && ct->is_string()) created = ct->get<std::string>();
    }
    cells.push_back(name);
    cells.push_back(HumanAge(created, now));
  }
  std::vector<Json> kind_cells;
  if (rt.timed_cells) {
    kind_cells = rt.timed_cells(object, now);
  } else if (rt.cells) {
    kind_cells = rt.cells(object);
  }
  for (size_t i = 0; i < rt.columns.size(); ++i) {
    cells.push_back(i < kind_cells.size() ? Cell(rt.columns[i], kind_cells[i], now) : Json());
  }
  Json row = Json::object();
  row["cells"] = std::move(cells);
  switch (options.include) {
    case TableOptions::Include::kNone:
      row["object"] = nullptr;
      break;
    case TableOptions::Include::kObject:
      row["object"] = object;
      break;
    case TableOptions::Include::kMetadata: {
      Json partial = Json::object();
      partial["kind"] = "PartialObjectMetadata";
      partial["apiVersion"] = options.api_version;
      partial["metadata"] = meta ? *meta : Json::object();
      row["object"] = std::move(partial);
      break;
    }
  }
  return row;
}

std::string RenderTable(const ResourceType& rt, const std::vector<Json>& objects,
                        const std::string& resource_version, const std::string& continue_token,
                        const TableOptions& options, WallClock::time_point now) {
  Json rows = Json::array();
  for (const auto& o : objects) rows.push_back(TableRow(rt, o, options, now));
  // Field order as the apiserver writes metav1.Table.
  std::string out =
      "{\"kind\":\"Table\",\"apiVersion\":" + Dump(Json(options.api_version)) + ",\"metadata\":{";
  if (!resource_version.empty()) out += "\"resourceVersion\":" + Dump(Json(resource_version));
  if (!continue_token.empty()) {
    if (!resource_version.empty()) out += ',';
    out += "\"continue\":" + Dump(Json(continue_token));
  }
  out += "},\"columnDefinitions\":";
  out += options.no_headers ? std::string("null") : ColumnDefinitionsJson(rt);
  out += ",\"rows\":";
  out += Dump(rows);
  out += '}';
  return out;
}

}  // namespace edgevirt::api::machinery
