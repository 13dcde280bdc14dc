"""The schema reset before a restore: one PL/pgSQL block, tried first, then run for real.

It drops the schemas the backup recreates (and ``public``) and the large objects, then
recreates ``public``. Three things make it safe on a live database:

- **public comes back as it was.** Its owner, ACL and comment are read in the same
  transaction before the drop and re-applied after ``CREATE SCHEMA public``, so roles
  that read through it (a ``reporting`` role) keep working. Whatever the dump says about
  public (its ACL or comment) runs afterwards and wins.
- **Nothing outside those schemas is dropped silently.** ``DROP SCHEMA ... CASCADE`` also
  drops what depends on their objects elsewhere (a view or a foreign key in a schema
  created after the backup, a column of a type from public). The block lists every object
  that has a dependency (pg_depend) and lives outside those schemas, drops, and compares:
  when anything of that list is gone, it undoes the drop and fails with their names
  (SQLSTATE 2BP01), unless the operator allowed it (``--drop-dependents``).
- **It never queues for a lock while holding others.** A DROP waiting on one table (read
  by an idle-in-transaction session) would hold the locks it already took, and the app's
  reads of those tables would wait with it. The drops run under a short lock_timeout in a
  subtransaction; when a lock is not granted, the subtransaction is rolled back (which
  releases every lock it took), the block sleeps, and tries again until the lock-wait
  time is spent (then SQLSTATE 55P03).
"""

from __future__ import annotations

import secrets

from psycopg import sql

# How long one attempt waits for a lock: the longest an app query can be held up by it.
ATTEMPT_LOCK_TIMEOUT_MS = 200

# Objects with a dependency (pg_depend), each with the schema it lives in: for triggers,
# rules, column defaults, policies and publication members that of their table; for an
# extension, a schema's default privileges or a publication's schema, that schema. Toast
# tables go with theirs, and an extension's members (casts...) with the extension.
# Objects of no schema belong where what they are made of lives, so that the dump that
# holds those recreates them too: an operator-class member with its class (even in a
# pg_catalog family), a cast with its types and function outside pg_catalog (a range
# type's multirange cast with the range type). An operator-family member added with
# ALTER OPERATOR FAMILY to a pg_catalog family stays in pg_catalog: pg_dump leaves it out,
# so the reset would lose it.
_OUTSIDE_OBJECTS = """
SELECT DISTINCT d.classid::oid || '/' || d.objid || '/' || d.objsubid
FROM pg_catalog.pg_depend d
CROSS JOIN LATERAL (SELECT CASE d.classid
  WHEN 'pg_catalog.pg_namespace'::regclass THEN d.objid
  WHEN 'pg_catalog.pg_class'::regclass THEN
    (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = d.objid)
  WHEN 'pg_catalog.pg_type'::regclass THEN
    (SELECT typnamespace FROM pg_catalog.pg_type WHERE oid = d.objid)
  WHEN 'pg_catalog.pg_proc'::regclass THEN
    (SELECT pronamespace FROM pg_catalog.pg_proc WHERE oid = d.objid)
  WHEN 'pg_catalog.pg_constraint'::regclass THEN
    (SELECT connamespace FROM pg_catalog.pg_constraint WHERE oid = d.objid)
  WHEN 'pg_catalog.pg_extension'::regclass THEN
    (SELECT extnamespace FROM pg_catalog.pg_extension WHERE oid = d.objid)
  WHEN 'pg_catalog.pg_trigger'::regclass THEN
    (SELECT c.relnamespace FROM pg_catalog.pg_trigger t
     JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid WHERE t.oid = d.objid)
  WHEN 'pg_catalog.pg_rewrite'::regclass THEN
    (SELECT c.relnamespace FROM pg_catalog.pg_rewrite r
     JOIN pg_catalog.pg_class c ON c.oid = r.ev_class WHERE r.oid = d.objid)
  WHEN 'pg_catalog.pg_attrdef'::regclass THEN
    (SELECT c.relnamespace FROM pg_catalog.pg_attrdef a
     JOIN pg_catalog.pg_class c ON c.oid = a.adrelid WHERE a.oid = d.objid)
  WHEN 'pg_catalog.pg_policy'::regclass THEN
    (SELECT c.relnamespace FROM pg_catalog.pg_policy p
     JOIN pg_catalog.pg_class c ON c.oid = p.polrelid WHERE p.oid = d.objid)
  WHEN 'pg_catalog.pg_amop'::regclass THEN coalesce(
    (SELECT c.opcnamespace FROM pg_catalog.pg_depend i
     JOIN pg_catalog.pg_opclass c ON c.oid = i.refobjid
     WHERE i.classid = d.classid AND i.objid = d.objid AND i.deptype = 'i'
       AND i.refclassid = 'pg_catalog.pg_opclass'::regclass),
    (SELECT f.opfnamespace FROM pg_catalog.pg_amop o
     JOIN pg_catalog.pg_opfamily f ON f.oid = o.amopfamily WHERE o.oid = d.objid))
  WHEN 'pg_catalog.pg_amproc'::regclass THEN coalesce(
    (SELECT c.opcnamespace FROM pg_catalog.pg_depend i
     JOIN pg_catalog.pg_opclass c ON c.oid = i.refobjid
     WHERE i.classid = d.classid AND i.objid = d.objid AND i.deptype = 'i'
       AND i.refclassid = 'pg_catalog.pg_opclass'::regclass),
    (SELECT f.opfnamespace FROM pg_catalog.pg_amproc o
     JOIN pg_catalog.pg_opfamily f ON f.oid = o.amprocfamily WHERE o.oid = d.objid))
  WHEN 'pg_catalog.pg_cast'::regclass THEN
    (SELECT coalesce(min(x.ns) FILTER (WHERE NOT x.ns = ANY (doomed)), min(x.ns))
     FROM pg_catalog.pg_cast c
     CROSS JOIN LATERAL (VALUES
       ((SELECT typnamespace FROM pg_catalog.pg_type WHERE oid = c.castsource)),
       ((SELECT typnamespace FROM pg_catalog.pg_type WHERE oid = c.casttarget)),
       ((SELECT pronamespace FROM pg_catalog.pg_proc WHERE oid = c.castfunc))) x(ns)
     WHERE c.oid = d.objid AND x.ns <> 'pg_catalog'::regnamespace)
  WHEN 'pg_catalog.pg_default_acl'::regclass THEN
    (SELECT defaclnamespace FROM pg_catalog.pg_default_acl WHERE oid = d.objid)
  WHEN 'pg_catalog.pg_publication_rel'::regclass THEN
    (SELECT c.relnamespace FROM pg_catalog.pg_publication_rel p
     JOIN pg_catalog.pg_class c ON c.oid = p.prrelid WHERE p.oid = d.objid)
  ELSE pg_catalog.to_regnamespace(pg_catalog.quote_ident(coalesce(
    (pg_catalog.pg_identify_object(d.classid, d.objid, 0)).schema,
    -- a FOR TABLES IN SCHEMA member (PostgreSQL 15 and later): the schema it names
    (SELECT a.object_names[1]
     FROM pg_catalog.pg_identify_object_as_address(d.classid, d.objid, 0) a
     WHERE a.type = 'publication namespace'))))
  END AS home) h
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = h.home
WHERE d.classid <> 0
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend m
                  JOIN pg_catalog.pg_extension e ON e.oid = m.refobjid
                  WHERE m.classid = d.classid AND m.objid = d.objid AND m.deptype = 'e'
                    AND m.refclassid = 'pg_catalog.pg_extension'::regclass
                    AND e.extnamespace = ANY (doomed))
  AND (h.home IS NULL OR NOT (h.home = ANY (doomed) OR n.nspname LIKE 'pg\\_toast%'
                              OR n.nspname LIKE 'pg\\_temp\\_%'))
"""

# A lost object's own row type, array type, view rule, columns and the internal triggers
# of a foreign key go with it: name the object once.
_DESCRIBE_LOST = """
SELECT count(*), string_agg(what, '; ' ORDER BY what)
  FILTER (WHERE rank <= 10)
FROM (SELECT what, row_number() OVER (ORDER BY what) AS rank FROM (
  SELECT DISTINCT pg_catalog.pg_describe_object(k[1]::oid, k[2]::oid, k[3]::int) AS what
  FROM (SELECT pg_catalog.string_to_array(x, '/') AS k
        FROM pg_catalog.unnest(pg_catalog.string_to_array(lost, ',')) x) keys
  WHERE NOT (k[1]::oid = 'pg_catalog.pg_type'::regclass AND EXISTS (
               SELECT 1 FROM pg_catalog.pg_type t WHERE t.oid = k[2]::oid
               AND (t.typrelid <> 0 OR t.typelem <> 0)))
    AND NOT (k[1]::oid = 'pg_catalog.pg_rewrite'::regclass AND EXISTS (
               SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.oid = k[2]::oid
               AND r.rulename = '_RETURN'))
    AND NOT (k[1]::oid = 'pg_catalog.pg_trigger'::regclass AND EXISTS (
               SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.oid = k[2]::oid
               AND t.tgisinternal))
    AND NOT (k[3] <> '0' AND k[1] || '/' || k[2] || '/0' = ANY (
               pg_catalog.string_to_array(lost, ',')))) described) ranked
"""

_BLOCK = """
DO ${tag}$
DECLARE
  doomed oid[];
  check_dependents boolean := {check};
  deadline timestamptz := clock_timestamp() + {wait};
  caller_lock_timeout text := current_setting('lock_timeout');
  caller_min_messages text := current_setting('client_min_messages');
  attempt int := 0;
  had_public boolean;
  public_owner text;
  public_acl aclitem[];
  public_note text;
  outside text[];
  lost text;
  total bigint;
  named text;
  item record;
BEGIN
  -- the cascade's "drop cascades to ..." notices would bury the one error that matters
  PERFORM set_config('client_min_messages', 'warning', true);
  SELECT n.nspowner::regrole::text, n.nspacl, obj_description(n.oid, 'pg_namespace')
    INTO public_owner, public_acl, public_note
    FROM pg_catalog.pg_namespace n WHERE n.nspname = 'public';
  had_public := FOUND;
  IF NOT had_public AND current_setting('server_version_num')::int >= 150000 THEN
    -- no public to keep: make it as a fresh database has it (PostgreSQL 15 and later)
    public_owner := 'pg_database_owner';
    public_acl := '{{pg_database_owner=UC/pg_database_owner,=U/pg_database_owner}}';
    public_note := 'standard public schema';
  END IF;
  LOOP
    BEGIN
      PERFORM set_config('lock_timeout', '{attempt_ms}ms', true);
      doomed := ARRAY(SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = ANY ({names}));
      IF check_dependents THEN
        outside := ARRAY({outside});
      END IF;
      {drops}
      PERFORM count(pg_catalog.lo_unlink(oid)) FROM pg_catalog.pg_largeobject_metadata
        WHERE pg_catalog.pg_has_role(lomowner, 'USAGE');
      IF check_dependents THEN
        SELECT string_agg(x, ',') INTO lost
          FROM (SELECT unnest(outside) EXCEPT {present}) gone(x);
        IF lost IS NOT NULL THEN
          -- undoes the drops, so the lost objects can be named below
          RAISE EXCEPTION USING ERRCODE = 'dependent_objects_still_exist', MESSAGE = lost;
        END IF;
      END IF;
      EXIT;
    EXCEPTION
      WHEN lock_not_available THEN
        {give_up}
      WHEN dependent_objects_still_exist THEN
        lost := SQLERRM;
        EXIT;
    END;
  END LOOP;
  PERFORM set_config('lock_timeout', caller_lock_timeout, true);
  IF lost IS NOT NULL THEN
    {describe} INTO total, named;
    RAISE EXCEPTION USING ERRCODE = 'dependent_objects_still_exist',
      MESSAGE = 'cosmic-backup: the reset would drop ' || total
        || ' object(s) outside the schemas the backup holds',
      DETAIL = named || CASE WHEN total > 10 THEN '; and ' || (total - 10) || ' more'
                             ELSE '' END;
  END IF;
  CREATE SCHEMA public;
  IF public_owner IS NOT NULL THEN
    BEGIN
      EXECUTE format('ALTER SCHEMA public OWNER TO %s', public_owner);
      IF public_acl IS NOT NULL THEN
        EXECUTE format('REVOKE ALL ON SCHEMA public FROM %s', public_owner);
        FOR item IN SELECT a.grantee, a.privilege_type, a.is_grantable
                    FROM aclexplode(public_acl) WITH ORDINALITY a ORDER BY a.ordinality LOOP
          EXECUTE format('GRANT %s ON SCHEMA public TO %s%s', item.privilege_type,
            CASE WHEN item.grantee = 0 THEN 'PUBLIC' ELSE item.grantee::regrole::text END,
            CASE WHEN item.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
      END IF;
      EXECUTE format('COMMENT ON SCHEMA public IS %L', public_note);
    EXCEPTION WHEN insufficient_privilege THEN
      -- a public that was there must come back as it was; a new one may stay ours
      IF had_public THEN RAISE; END IF;
    END;
  END IF;
  PERFORM set_config('client_min_messages', caller_min_messages, true);
END
${tag}$;
"""

# After a lock was not granted (the subtransaction, and every lock it took, is gone).
_GIVE_UP = """IF clock_timestamp() >= deadline THEN
          RAISE EXCEPTION USING ERRCODE = 'lock_not_available',
            MESSAGE = 'cosmic-backup: objects to replace are locked by another session';
        END IF;
        attempt := attempt + 1;
        PERFORM pg_sleep(least(1.0, 0.05 * 2 ^ attempt));"""

# Without the reset (this user may not drop the schemas), pg_restore --clean drops the
# backup's objects one by one, each DROP queueing with the earlier ones' locks held. So
# the tables of those schemas this user may lock are locked first, in the same way.
_LOCKS = """
DO ${tag}$
DECLARE
  deadline timestamptz := clock_timestamp() + {wait};
  caller_lock_timeout text := current_setting('lock_timeout');
  attempt int := 0;
  rel record;
BEGIN
  LOOP
    BEGIN
      PERFORM set_config('lock_timeout', '{attempt_ms}ms', true);
      FOR rel IN SELECT c.oid::regclass::text AS name
                 FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = ANY ({names}) AND c.relkind IN ('r', 'p')
                   AND pg_catalog.has_table_privilege(c.oid, 'UPDATE, DELETE, TRUNCATE')
                   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                   WHERE d.classid = 'pg_catalog.pg_class'::regclass
                                     AND d.objid = c.oid AND d.deptype = 'e')
                 ORDER BY c.oid LOOP
        EXECUTE format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', rel.name);
      END LOOP;
      EXIT;
    EXCEPTION WHEN lock_not_available THEN
        {give_up}
    END;
  END LOOP;
  PERFORM set_config('lock_timeout', caller_lock_timeout, true);
END
${tag}$;
"""

_PRESENT = (
    "SELECT DISTINCT d.classid::oid || '/' || d.objid || '/' || d.objsubid "
    "FROM pg_catalog.pg_depend d WHERE d.classid <> 0"
)


def reset_block(schemas: list[str], *, lock_wait: int, drop_dependents: bool = False) -> str:
    """The reset as one statement (a DO block), for a trial and for the restore's prelude.

    It gives up after `lock_wait` seconds of locks not granted (SQLSTATE 55P03), and
    unless `drop_dependents` refuses to drop objects outside `schemas` (and public) that
    depend on theirs (SQLSTATE 2BP01, the objects named in its DETAIL).
    """
    names = _names(schemas)
    drops = " ".join(
        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE;").format(sql.Identifier(name)).as_string(None)
        for name in names
    )
    return _BLOCK.format(
        tag=dollar_tag(),
        check="false" if drop_dependents else "true",
        wait=_interval(lock_wait),
        attempt_ms=ATTEMPT_LOCK_TIMEOUT_MS,
        names=_array(names),
        outside=_OUTSIDE_OBJECTS.strip(),
        drops=drops,
        present=_PRESENT,
        describe=_DESCRIBE_LOST.strip(),
        give_up=_GIVE_UP,
    )


def lock_block(schemas: list[str], *, lock_wait: int) -> str:
    """Lock the tables of `schemas` (and public) that this user may lock, without ever
    queueing for one while holding others; SQLSTATE 55P03 after `lock_wait` seconds."""
    return _LOCKS.format(
        tag=dollar_tag(),
        wait=_interval(lock_wait),
        attempt_ms=ATTEMPT_LOCK_TIMEOUT_MS,
        names=_array(_names(schemas)),
        give_up=_GIVE_UP,
    )


def dollar_tag() -> str:
    """A dollar-quote tag no schema name in the block can contain (names come from the
    backed-up database), so none can end the block early."""
    return f"cosmic_{secrets.token_hex(8)}"


def reset_schemas(schemas: list[str]) -> list[str]:
    """The schemas the reset drops (or whose tables it locks): the backup's and public."""
    return sorted(set(schemas) | {"public"})


_names = reset_schemas


def _interval(seconds: int) -> str:
    return sql.Literal(f"{max(seconds, 0)} seconds").as_string(None) + "::interval"


def _array(names: list[str]) -> str:
    array = sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(map(sql.Literal, names)))
    return array.as_string(None)
