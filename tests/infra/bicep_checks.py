"""Static checks of the deployment template in infra/ (issue 7), on the pycep-parser model of the Bicep.

There is no Bicep compiler here (and no Azure), so this module is what stands between an edit of the
template and a deployment that is insecure or does not run the app: ``check_infra(infra_dir)`` parses
``main.bicep`` and every local module it uses and returns one :class:`Finding` per broken rule, empty
when the template is right. Each finding's ``check`` is a stable id:

======================  ==========================================================================
``parse``               a Bicep file does not parse, or a module file is missing
``resources``           a resource the deployment needs is missing (or there are two)
``module-params``       a module is called without a required parameter, or with an unknown one
``storage-*``           storage account: ``shared-key`` (allowSharedKeyAccess must be false), ``tls``
                        (TLS1_2), ``https`` (HTTPS only), ``public-blob`` (no anonymous blob access),
                        ``key-use`` (no listKeys()/AccountKey anywhere in the templates)
``plan-flex``           the plan is not Flex Consumption (FC1, Linux)
``site-*``              Function App: ``kind``, ``https-only``, ``tls`` (1.2, also for SCM), ``ftps``
                        (disabled), ``basic-auth`` (ftp and scm publishing credentials off), ``runtime``
                        (python 3.11), ``deployment-identity`` (package container with a managed
                        identity), ``scale``, ``identity`` (user-assigned, also for Key Vault references)
``flex-deprecated``     a setting or site property that Flex Consumption does not accept
``settings-*``          app settings: ``missing`` (a spec section 6 name), ``connection-string`` (the
                        AzureWebJobsStorage connection string must not be set), ``identity-storage``
                        (AzureWebJobsStorage__accountName/__credential/__clientId), ``keyvault-ref``
                        (both secrets are Key Vault references), ``app-insights``, ``public-url``
``keyvault-*``          ``rbac``, ``soft-delete``, ``purge-protection``, ``secrets`` (both secrets held,
                        from secure parameters)
``secure-params``       a secret parameter is not ``@secure()`` or has a default
``roles``               a role the app's identity needs is not assigned on its resource
``monitoring``          Application Insights is not workspace-based
``workbook``            the operations workbook is missing, not linked to the Application Insights
                        component (``sourceId`` and the ``__APP_INSIGHTS_ID__`` placeholder), or its
                        ``serializedData`` is not ``loadTextContent`` of a JSON file in infra/
``params``              a top-level parameter default is wrong (location, Graph hosts), or
                        main.parameters.json names an unknown parameter or holds a secret
``outputs``             an output a person needs after deploying is missing or wrong
======================  ==========================================================================
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycep import BicepParser

from sync_core.adapters.graph.endpoints import DEFAULT_AUTHORITY_HOST, DEFAULT_GRAPH_BASE_URL

# Built-in role definition ids (the same in every tenant).
BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"

STORAGE = "Microsoft.Storage/storageAccounts"
VAULT = "Microsoft.KeyVault/vaults"
COMPONENTS = "Microsoft.Insights/components"
WORKBOOKS = "Microsoft.Insights/workbooks"
WORKBOOK_PLACEHOLDER = "__APP_INSIGHTS_ID__"
REQUIRED_ROLES = {
    (STORAGE, BLOB_DATA_OWNER): "Storage Blob Data Owner on the storage account",
    (STORAGE, QUEUE_DATA_CONTRIBUTOR): "Storage Queue Data Contributor on the storage account",
    (STORAGE, TABLE_DATA_CONTRIBUTOR): "Storage Table Data Contributor on the storage account",
    (VAULT, KEY_VAULT_SECRETS_USER): "Key Vault Secrets User on the Key Vault",
}

# Spec section 6; AzureWebJobsStorage is there in its identity-based form.
SPEC_SETTINGS = (
    "AzureWebJobsStorage__accountName",
    "GRAPH_CLIENT_ID",
    "GRAPH_CLIENT_SECRET",
    "GRAPH_AUTHORITY_HOST",
    "GRAPH_BASE_URL",
    "PUBLIC_BASE_URL",
    "TOKEN_ENCRYPTION_KEY",
    "REQUESTS_CA_BUNDLE",
)
SECRET_SETTINGS = ("GRAPH_CLIENT_SECRET", "TOKEN_ENCRYPTION_KEY")
SECRET_PARAMS = ("graphClientSecret", "tokenEncryptionKey")
KEY_VAULT_SECRET_NAMES = ("graph-client-secret", "token-encryption-key")

# Flex Consumption keeps runtime, scale and deployment in functionAppConfig and rejects or ignores these.
FLEX_DEPRECATED_SETTINGS = frozenset(
    {
        "FUNCTIONS_EXTENSION_VERSION",
        "FUNCTIONS_WORKER_RUNTIME",
        "FUNCTIONS_WORKER_RUNTIME_VERSION",
        "FUNCTIONS_MAX_HTTP_CONCURRENCY",
        "FUNCTIONS_WORKER_PROCESS_COUNT",
        "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED",
        "SCM_DO_BUILD_DURING_DEPLOYMENT",
        "ENABLE_ORYX_BUILD",
        "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
        "WEBSITE_CONTENTOVERVNET",
        "WEBSITE_CONTENTSHARE",
        "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
        "WEBSITE_NODE_DEFAULT_VERSION",
        "WEBSITE_RUN_FROM_PACKAGE",
        "WEBSITE_SKIP_CONTENTSHARE_VALIDATION",
        "WEBSITE_TIME_ZONE",
    }
)
FLEX_DEPRECATED_SITE_CONFIG = frozenset(
    {
        "alwaysOn",
        "functionAppScaleLimit",
        "javaVersion",
        "linuxFxVersion",
        "netFrameworkVersion",
        "powerShellVersion",
        "preWarmedInstanceCount",
        "use32BitWorkerProcess",
        "windowsFxVersion",
    }
)

KEY_VAULT_REFERENCE = re.compile(r"^@Microsoft\.KeyVault\(SecretUri=\$\{[^}]+\}\)$")
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
REDIRECT_PATHS = ("/api/auth/callback", "/api/auth/admin-consent/callback")
NOTIFICATION_PATHS = ("/api/notifications", "/api/notifications/lifecycle")


@dataclass(frozen=True)
class Finding:
    check: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.where}: {self.message}"


@dataclass(frozen=True)
class Resource:
    file: str
    symbol: str
    type: str
    config: Mapping[str, Any]

    @property
    def where(self) -> str:
        return f"{self.file} {self.symbol}"

    def get(self, path: str) -> Any:
        return dig(self.config, path)


@functools.cache
def _parser() -> BicepParser:
    return BicepParser()


@functools.lru_cache(maxsize=64)
def _parse_text(text: str) -> Mapping[str, Any]:
    """Parsed once per distinct text: variants of the template re-parse only the file they change."""
    return _parser().parse(text=text)


def dig(value: Any, path: str) -> Any:
    """``value['a']['b']`` for ``'a.b'``; None where any step is missing."""
    for key in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _node(value: Any) -> Mapping[str, Any] | None:
    """The inner dict of a pycep function call or operator, None for literals."""
    if isinstance(value, Mapping) and len(value) == 1:
        kind, inner = next(iter(value.items()))
        if kind in ("function", "operator") and isinstance(inner, Mapping) and "type" in inner:
            return inner
    return None


def object_literals(value: Any) -> Iterator[Mapping[str, Any]]:
    """The object literals an expression is built from (``union({...}, cond ? {} : {...})`` gives all)."""
    inner = _node(value)
    if inner is not None:
        for sub in dict(inner.get("parameters") or inner.get("operands") or {}).values():
            yield from object_literals(sub)
    elif isinstance(value, Mapping):
        yield value


def accessor_path(value: Any) -> list[str]:
    """``identity.properties.principalId`` as ``['identity', 'properties', 'principalId']``."""
    inner = _node(value)
    if inner is not None and inner["type"] == "property_accessor":
        ops = inner["operands"]
        return accessor_path(ops["operand_1"]) + accessor_path(ops["operand_2"])
    return [value] if isinstance(value, str) else []


class Template:
    """``main.bicep`` and the local modules it uses (recursively), parsed; plus parse findings."""

    def __init__(self, infra_dir: Path) -> None:
        self.root = infra_dir
        self.files: dict[str, Mapping[str, Any]] = {}
        self.texts: dict[str, str] = {}
        self.findings: list[Finding] = []
        self._seen: set[str] = set()
        self._load(infra_dir / "main.bicep")
        for path in sorted(infra_dir.rglob("*.bicep")):
            self._load(path)  # files no module uses must parse too

    def _rel(self, path: Path) -> str:
        return Path(os.path.relpath(path.resolve(), self.root.resolve())).as_posix()

    def _load(self, path: Path) -> None:
        rel = self._rel(path)
        if rel in self._seen:
            return
        self._seen.add(rel)
        if not path.is_file():
            self.findings.append(Finding("parse", rel, "file not found"))
            return
        text = path.read_text()
        try:
            parsed = _parse_text(text)
        except Exception as exc:  # lark/pycep raise many error types; each is a finding
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.findings.append(Finding("parse", rel, f"does not parse: {first}"))
            return
        self.files[rel] = parsed
        self.texts[rel] = text
        for module in dict(parsed.get("modules") or {}).values():
            if module.get("type") == "local":
                self._load(path.parent / module["detail"]["path"])

    def module_file(self, including_file: str, module: Mapping[str, Any]) -> str:
        return self._rel(self.root / Path(including_file).parent / module["detail"]["path"])

    def resources(self, type_: str | None = None, *, existing: bool = False) -> list[Resource]:
        found = []
        for rel, parsed in self.files.items():
            for symbol, resource in dict(parsed.get("resources") or {}).items():
                if bool(resource.get("existing")) != existing:
                    continue
                if type_ is None or resource["type"] == type_:
                    found.append(Resource(rel, symbol, resource["type"], resource.get("config") or {}))
        return found

    def resource_type(self, file: str, symbol: str) -> str | None:
        resource = dict(self.files[file].get("resources") or {}).get(symbol)
        return None if resource is None else str(resource["type"])


def check_infra(infra_dir: Path) -> list[Finding]:
    template = Template(infra_dir)
    if template.findings:
        return list(template.findings)  # the rest cannot be judged on a partial template
    findings: list[Finding] = []
    for rule in (
        _module_params,
        _storage,
        _key_use,
        _plan,
        _site,
        _app_settings,
        _key_vault,
        _secure_params,
        _roles,
        _monitoring,
        _workbook,
        _params,
        _outputs,
    ):
        findings.extend(rule(template))
    return findings


def _one(template: Template, type_: str) -> tuple[Resource | None, list[Finding]]:
    found = template.resources(type_)
    if len(found) != 1:
        return None, [Finding("resources", "infra", f"expected one {type_}, found {len(found)}")]
    return found[0], []


def _module_params(template: Template) -> Iterator[Finding]:
    for rel, parsed in template.files.items():
        for symbol, module in dict(parsed.get("modules") or {}).items():
            target = template.files.get(template.module_file(rel, module))
            if target is None:
                continue
            declared = dict(target.get("parameters") or {})
            given = set(dict(dig(module, "config.params") or {}))
            required = {name for name, p in declared.items() if p.get("default") is None}
            for name in sorted(required - given):
                yield Finding("module-params", f"{rel} {symbol}", f"required parameter {name} not passed")
            for name in sorted(given - set(declared)):
                yield Finding("module-params", f"{rel} {symbol}", f"unknown parameter {name}")


def _storage(template: Template) -> Iterator[Finding]:
    storage, problems = _one(template, STORAGE)
    yield from problems
    if storage is None:
        return
    rules = (
        ("storage-shared-key", "properties.allowSharedKeyAccess", False, "shared-key access must be off"),
        ("storage-tls", "properties.minimumTlsVersion", "TLS1_2", "minimum TLS version must be TLS1_2"),
        ("storage-https", "properties.supportsHttpsTrafficOnly", True, "must accept HTTPS only"),
        ("storage-public-blob", "properties.allowBlobPublicAccess", False, "anonymous blob access must be off"),
    )
    for check, path, expected, message in rules:
        value = storage.get(path)
        if (value is not expected) if isinstance(expected, bool) else (value != expected):
            yield Finding(check, storage.where, f"{message} ({path} is {value!r})")
    for container in template.resources("Microsoft.Storage/storageAccounts/blobServices/containers"):
        if container.get("properties.publicAccess") not in (None, "None"):
            yield Finding("storage-public-blob", container.where, "container must not be public")


def _key_use(template: Template) -> Iterator[Finding]:
    for rel, text in template.texts.items():
        if re.search(r"\blistKeys\s*\(|AccountKey=|listAccountSas|listServiceSas", text):
            yield Finding("storage-key-use", rel, "uses a storage account key or SAS")


def _plan(template: Template) -> Iterator[Finding]:
    plan, problems = _one(template, "Microsoft.Web/serverfarms")
    yield from problems
    if plan is not None and (
        plan.get("sku.name") != "FC1"
        or plan.get("sku.tier") != "FlexConsumption"
        or plan.get("properties.reserved") is not True
    ):
        yield Finding("plan-flex", plan.where, "must be sku FC1 / FlexConsumption with reserved: true (Linux)")


def _site_resource(template: Template) -> tuple[Resource | None, list[Finding]]:
    return _one(template, "Microsoft.Web/sites")


def _site(template: Template) -> Iterator[Finding]:
    site, problems = _site_resource(template)
    yield from problems
    if site is None:
        return
    if site.get("kind") != "functionapp,linux":
        yield Finding("site-kind", site.where, f"kind must be functionapp,linux, not {site.get('kind')!r}")
    if site.get("properties.httpsOnly") is not True:
        yield Finding("site-https-only", site.where, "httpsOnly must be true")
    for key in ("minTlsVersion", "scmMinTlsVersion"):
        if site.get(f"properties.siteConfig.{key}") != "1.2":
            yield Finding("site-tls", site.where, f"siteConfig.{key} must be 1.2")
    if site.get("properties.siteConfig.ftpsState") != "Disabled":
        yield Finding("site-ftps", site.where, "siteConfig.ftpsState must be Disabled")
    for key in sorted(set(dict(site.get("properties.siteConfig") or {})) & FLEX_DEPRECATED_SITE_CONFIG):
        yield Finding("flex-deprecated", site.where, f"siteConfig.{key} is not for Flex Consumption")

    runtime = site.get("properties.functionAppConfig.runtime") or {}
    if dig(runtime, "name") != "python" or dig(runtime, "version") != "3.11":
        yield Finding("site-runtime", site.where, f"functionAppConfig.runtime must be python 3.11, not {runtime!r}")
    storage = site.get("properties.functionAppConfig.deployment.storage") or {}
    auth = dig(storage, "authentication.type")
    if dig(storage, "type") != "blobContainer" or auth not in ("UserAssignedIdentity", "SystemAssignedIdentity"):
        yield Finding(
            "site-deployment-identity", site.where, "deployment storage must be a blob container with identity auth"
        )
    scale = site.get("properties.functionAppConfig.scaleAndConcurrency") or {}
    if not {"maximumInstanceCount", "instanceMemoryMB"} <= set(dict(scale)):
        yield Finding(
            "site-scale",
            site.where,
            "functionAppConfig.scaleAndConcurrency needs maximumInstanceCount and instanceMemoryMB",
        )

    identity_type = str(site.get("identity.type") or "")
    kv_identity = site.get("properties.keyVaultReferenceIdentity")
    if "UserAssigned" not in identity_type or not site.get("identity.userAssignedIdentities"):
        yield Finding("site-identity", site.where, "must run as a user-assigned managed identity")
    if not kv_identity or kv_identity == "SystemAssigned":
        yield Finding("site-identity", site.where, "keyVaultReferenceIdentity must be the user-assigned identity")
    elif (
        auth == "UserAssignedIdentity" and dig(storage, "authentication.userAssignedIdentityResourceId") != kv_identity
    ):
        yield Finding(
            "site-identity", site.where, "deployment storage and Key Vault references must use the same identity"
        )

    policies = {
        p.get("name"): p.get("properties.allow")
        for p in template.resources("Microsoft.Web/sites/basicPublishingCredentialsPolicies")
        if p.file == site.file and p.get("parent") == site.symbol
    }
    for name in ("ftp", "scm"):
        if policies.get(name) is not False:
            yield Finding("site-basic-auth", site.where, f"basic publishing credentials for {name} must be disabled")


def app_settings(template: Template) -> tuple[dict[str, Any], str]:
    """Every app setting name the template can set on the Function App, with its value expression."""
    site, _ = _site_resource(template)
    settings: dict[str, Any] = {}
    if site is None:
        return settings, "infra"
    for item in site.get("properties.siteConfig.appSettings") or []:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            settings[item["name"]] = item.get("value")
    for config in template.resources("Microsoft.Web/sites/config"):
        if config.file == site.file and config.get("parent") == site.symbol and config.get("name") == "appsettings":
            for literal in object_literals(config.get("properties")):
                settings.update(literal)
    return settings, site.where


def _app_settings(template: Template) -> Iterator[Finding]:
    settings, where = app_settings(template)
    for name in SPEC_SETTINGS:
        if name not in settings:
            yield Finding("settings-missing", where, f"app setting {name} is not set")
    if "AzureWebJobsStorage" in settings:
        yield Finding("settings-connection-string", where, "AzureWebJobsStorage (a connection string) must not be set")
    if (
        settings.get("AzureWebJobsStorage__credential") != "managedidentity"
        or "AzureWebJobsStorage__clientId" not in settings
    ):
        yield Finding(
            "settings-identity-storage",
            where,
            "AzureWebJobsStorage__credential/__clientId must select the managed identity",
        )
    if "AZURE_CLIENT_ID" not in settings:
        yield Finding(
            "settings-identity-storage", where, "AZURE_CLIENT_ID must name the identity for DefaultAzureCredential"
        )
    for name in SECRET_SETTINGS:
        value = settings.get(name)
        if name in settings and not (isinstance(value, str) and KEY_VAULT_REFERENCE.match(value)):
            yield Finding(
                "settings-keyvault-ref", where, f"{name} must be a @Microsoft.KeyVault(SecretUri=...) reference"
            )
    if "APPLICATIONINSIGHTS_CONNECTION_STRING" not in settings:
        yield Finding("settings-app-insights", where, "APPLICATIONINSIGHTS_CONNECTION_STRING is not set")
    public_url = settings.get("PUBLIC_BASE_URL")
    if "PUBLIC_BASE_URL" in settings and not (
        isinstance(public_url, str) and public_url.startswith("https://") and "defaultHostName" in public_url
    ):
        yield Finding("settings-public-url", where, "PUBLIC_BASE_URL must be https://{defaultHostName}")
    for name in sorted(set(settings) & FLEX_DEPRECATED_SETTINGS):
        yield Finding("flex-deprecated", where, f"app setting {name} is not for Flex Consumption")


def _key_vault(template: Template) -> Iterator[Finding]:
    vault, problems = _one(template, VAULT)
    yield from problems
    if vault is None:
        return
    for check, key in (
        ("keyvault-rbac", "enableRbacAuthorization"),
        ("keyvault-soft-delete", "enableSoftDelete"),
        ("keyvault-purge-protection", "enablePurgeProtection"),
    ):
        if vault.get(f"properties.{key}") is not True:
            yield Finding(check, vault.where, f"properties.{key} must be true")
    params = dict(template.files[vault.file].get("parameters") or {})
    secrets = {
        s.get("name"): s.get("properties.value")
        for s in template.resources("Microsoft.KeyVault/vaults/secrets")
        if s.file == vault.file and s.get("parent") == vault.symbol
    }
    for name in KEY_VAULT_SECRET_NAMES:
        value = secrets.get(name)
        if name not in secrets:
            yield Finding("keyvault-secrets", vault.where, f"secret {name} is missing")
        elif not (isinstance(value, str) and _is_secure(params.get(value))):
            yield Finding(
                "keyvault-secrets", vault.where, f"secret {name} must take its value from a @secure() parameter"
            )


def _is_secure(param: Any) -> bool:
    return isinstance(param, Mapping) and any(d.get("type") == "secure" for d in param.get("decorators") or [])


def _secure_params(template: Template) -> Iterator[Finding]:
    for rel, parsed in template.files.items():
        for name, param in dict(parsed.get("parameters") or {}).items():
            if name in SECRET_PARAMS and (not _is_secure(param) or param.get("default") is not None):
                yield Finding("secure-params", f"{rel} {name}", "must be @secure() without a default")
    main_params = dict(template.files["main.bicep"].get("parameters") or {})
    for name in SECRET_PARAMS:
        if name not in main_params:
            yield Finding("secure-params", f"main.bicep {name}", "parameter is missing")


def _roles(template: Template) -> Iterator[Finding]:
    assigned: set[tuple[str | None, str]] = set()
    identities = {r.symbol for r in template.resources("Microsoft.ManagedIdentity/userAssignedIdentities")}
    if not identities:
        yield Finding("roles", "infra", "no user-assigned managed identity")
    for assignment in template.resources("Microsoft.Authorization/roleAssignments"):
        scope = assignment.get("scope")
        role = GUID.search(str(assignment.get("properties.roleDefinitionId")))
        if isinstance(scope, str) and role:
            assigned.add((template.resource_type(assignment.file, scope), role.group(0)))
        if assignment.get("properties.principalType") != "ServicePrincipal":
            yield Finding("roles", assignment.where, "principalType must be ServicePrincipal (a managed identity)")
    required = dict(REQUIRED_ROLES)
    for insights in template.resources(COMPONENTS):
        if insights.get("properties.DisableLocalAuth") is True:
            required[(COMPONENTS, MONITORING_METRICS_PUBLISHER)] = (
                "Monitoring Metrics Publisher on Application Insights"
            )
    for key, what in required.items():
        if key not in assigned:
            yield Finding("roles", "infra", f"missing role assignment: {what}")
    # The principal the roles are for is the app's identity.
    for rel, parsed in template.files.items():
        for symbol, module in dict(parsed.get("modules") or {}).items():
            target = template.files.get(template.module_file(rel, module), {})
            if "principalId" in dict(target.get("parameters") or {}):
                path = accessor_path(dig(module, "config.params.principalId"))
                if not path or path[0] not in identities or path[-1] != "principalId":
                    yield Finding("roles", f"{rel} {symbol}", "principalId must be the user-assigned identity's")


def _monitoring(template: Template) -> Iterator[Finding]:
    insights, problems = _one(template, COMPONENTS)
    yield from problems
    if not template.resources("Microsoft.OperationalInsights/workspaces"):
        yield Finding("monitoring", "infra", "no Log Analytics workspace")
    if insights is not None:
        if not insights.get("properties.WorkspaceResourceId"):
            yield Finding("monitoring", insights.where, "Application Insights must be workspace-based")
        settings, where = app_settings(template)
        if (
            insights.get("properties.DisableLocalAuth") is True
            and "APPLICATIONINSIGHTS_AUTHENTICATION_STRING" not in settings
        ):
            yield Finding(
                "settings-app-insights", where, "local auth is off: APPLICATIONINSIGHTS_AUTHENTICATION_STRING is needed"
            )


def workbook_file(template: Template) -> tuple[Resource | None, Path | None]:
    """The workbook resource and the JSON file its ``serializedData`` loads (None where not found)."""
    found = template.resources(WORKBOOKS)
    if len(found) != 1:
        return None, None
    workbook = found[0]
    data = workbook.get("properties.serializedData")
    loaded = dig(data, "function.parameters.original_string") if dig(data, "function.type") == "replace" else data
    if dig(loaded, "function.type") != "load_text_content":
        return workbook, None
    path = template.root / Path(workbook.file).parent / str(dig(loaded, "function.parameters.file_path"))
    return workbook, path


def _workbook(template: Template) -> Iterator[Finding]:
    workbook, problems = _one(template, WORKBOOKS)
    yield from problems
    if workbook is None:
        return
    components = {r.symbol for r in template.resources(COMPONENTS) if r.file == workbook.file}
    linked = accessor_path(workbook.get("properties.sourceId"))
    if len(linked) != 2 or linked[0] not in components or linked[1] != "id":
        yield Finding("workbook", workbook.where, "sourceId must be the Application Insights component's id")
    if workbook.get("kind") != "shared":
        yield Finding("workbook", workbook.where, "kind must be 'shared' (visible to the team)")
    data = workbook.get("properties.serializedData")
    replaced = dig(data, "function.parameters") if dig(data, "function.type") == "replace" else None
    new = accessor_path(dig(replaced, "new_string"))
    if dig(replaced, "old_string") != WORKBOOK_PLACEHOLDER or len(new) != 2 or new[0] not in components:
        message = f"serializedData must replace {WORKBOOK_PLACEHOLDER} with the component's id"
        yield Finding("workbook", workbook.where, message)
    _, path = workbook_file(template)
    if path is None or not path.is_file():
        yield Finding("workbook", workbook.where, "serializedData must be loadTextContent() of a file in infra/")
        return
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        yield Finding("workbook", workbook.where, f"{path.name} is not JSON: {exc}")
        return
    if document.get("version") != "Notebook/1.0" or WORKBOOK_PLACEHOLDER not in document.get("fallbackResourceIds", []):
        message = f"{path.name} must be Notebook/1.0 with fallbackResourceIds [{WORKBOOK_PLACEHOLDER}]"
        yield Finding("workbook", workbook.where, message)


def _params(template: Template) -> Iterator[Finding]:
    params = dict(template.files["main.bicep"].get("parameters") or {})
    location = dig(params, "location.default")
    if dig(location, "function.type") != "resource_group" or dig(location, "function.property_name") != "location":
        yield Finding("params", "main.bicep location", "default must be resourceGroup().location")
    for name, expected in (("graphAuthorityHost", DEFAULT_AUTHORITY_HOST), ("graphBaseUrl", DEFAULT_GRAPH_BASE_URL)):
        if dig(params, f"{name}.default") != expected:
            yield Finding("params", f"main.bicep {name}", f"default must be {expected} (as in sync_core.settings)")
    for name in ("namePrefix", "graphClientId"):
        if name not in params:
            yield Finding("params", f"main.bicep {name}", "parameter is missing")
    parameters_file = template.root / "main.parameters.json"
    if parameters_file.is_file():
        try:
            values = dict(json.loads(parameters_file.read_text()).get("parameters") or {})
        except (json.JSONDecodeError, AttributeError) as exc:
            yield Finding("params", "main.parameters.json", f"not a parameters file: {exc}")
            return
        for name in sorted(set(values) - set(params)):
            yield Finding("params", "main.parameters.json", f"{name} is not a parameter of main.bicep")
        for name in sorted(set(values) & set(SECRET_PARAMS)):
            yield Finding(
                "params", "main.parameters.json", f"{name} is a secret: pass it at deployment, not in the repo"
            )


def _outputs(template: Template) -> Iterator[Finding]:
    parsed = template.files["main.bicep"]
    outputs = dict(parsed.get("outputs") or {})
    app_url = dig(outputs, "appUrl.value")
    if app_url in dict(parsed.get("variables") or {}):
        app_url = dig(parsed, f"variables.{app_url}.value")
    if not (isinstance(app_url, str) and app_url.startswith("https://") and "defaultHostName" in app_url):
        yield Finding("outputs", "main.bicep appUrl", "must be https://{the app's defaultHostName}")
    if "functionAppName" not in outputs:
        yield Finding("outputs", "main.bicep functionAppName", "output is missing")
    for name, paths in (("redirectUris", REDIRECT_PATHS), ("notificationUrls", NOTIFICATION_PATHS)):
        values = dig(outputs, f"{name}.value")
        expected = [f"${{appUrl}}{path}" for path in paths]
        if values != expected:
            yield Finding("outputs", f"main.bicep {name}", f"must be {expected}, not {values!r}")
